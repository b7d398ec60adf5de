"""Start one worker process: pin its GPU, check the schema, run a solo-pool Celery worker.

`run_worker(settings, device=..., queues=..., name=...)` is what `s4c worker` calls;
`python -m worker.launch` does the same from the environment. One process per GPU: the
launcher sets CUDA_VISIBLE_DEVICES before torch is imported, and the code then says "cuda".
The solo pool runs tasks in this process (no fork, so CUDA and the loaded model live in the
one process); prefetch is 1 and messages are acknowledged after the task (acks_late).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from celery.utils.nodenames import default_nodename, host_format

from jobs.db import create_db_engine
from jobs.messaging import queue_for_model
from jobs.migrate import DatabaseNotMigrated, require_up_to_date
from jobs.settings import Settings

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """The worker cannot start as asked (GPU pinned too late, bad device, ...)."""


def pin_device(device: str, gpu: int | None = None) -> str:
    """Pin this process to one GPU through CUDA_VISIBLE_DEVICES; returns the device to use.

    `gpu=N` or `device="cuda:N"` pin GPU N and return "cuda"; "cuda" and "cpu" pass through.
    Must run before torch is imported, because CUDA reads the variable once.
    """
    index: str | None = None
    if gpu is not None:
        index = str(gpu)
    elif device.startswith("cuda:"):
        index = device.split(":", 1)[1]
    if index is None:
        if device not in ("cpu", "cuda") and not device.startswith("mps"):
            raise LaunchError(f"unknown device {device!r} (use cpu, cuda, cuda:N or --gpu N)")
        return device
    if not index.isdigit():
        raise LaunchError(f"GPU index must be a number, got {index!r}")
    if "torch" in sys.modules:
        raise LaunchError("torch was imported before the GPU was pinned; pin first")
    os.environ["CUDA_VISIBLE_DEVICES"] = index
    return "cuda"


def run_worker(
    settings: Settings,
    *,
    device: str | None = None,
    gpu: int | None = None,
    queues: Sequence[str] | None = None,
    name: str | None = None,
    loglevel: str = "INFO",
) -> int:
    """Run a worker in this process until it is stopped; returns its exit code.

    Serves `queues` (default: the queue of `settings.model_name`). Raises DatabaseNotMigrated
    (with the command to run) if the schema is not at head.
    """
    resolved = pin_device(device or settings.device, gpu)
    settings = settings.with_overrides(device=resolved)
    db = create_db_engine(settings.database_url)
    try:
        require_up_to_date(db)
    finally:
        db.dispose()
    from worker.app import create_worker_app  # after pinning: nothing below touches CUDA early

    app = create_worker_app(settings, preload_engine=True)  # solo pool: load before consuming
    worker = app.Worker(
        hostname=host_format(default_nodename(name or f"s4c-{resolved}@%h")),
        queues=list(queues or [queue_for_model(settings.model_name)]),
        pool_cls="solo",
        concurrency=1,
        prefetch_multiplier=1,
        loglevel=loglevel,
        without_gossip=True,
        without_mingle=True,
        optimization="fair",
    )
    worker.start()
    return int(worker.exitcode or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.launch", description=__doc__)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default S4C_DEVICE)")
    parser.add_argument("--gpu", type=int, default=None, help="pin GPU N (CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--queue", action="append", dest="queues", help="queue(s) to serve")
    parser.add_argument("--name", default=None, help="worker node name (default s4c-<device>@host)")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return run_worker(
            Settings.from_env(),
            device=args.device,
            gpu=args.gpu,
            queues=args.queues,
            name=args.name,
            loglevel=args.loglevel,
        )
    except (DatabaseNotMigrated, LaunchError) as exc:
        print(f"s4c worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
