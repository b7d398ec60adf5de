"""`alembic upgrade head` then `alembic check` on fresh SQLite and PostgreSQL databases.

PostgreSQL: a new database on the server of $S4C_TEST_POSTGRES_URL, else on an embedded
cluster; dropped afterwards. alembic reads the URL from S4C_DATABASE_URL (migrations/env.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from s4c.embedded import PostgresCluster, create_database, drop_database

REPO = Path(__file__).resolve().parent.parent
ALEMBIC = str(Path(sys.executable).with_name("alembic"))


def check(url: str, label: str) -> bool:
    env = {**os.environ, "S4C_DATABASE_URL": url}
    for args in (["upgrade", "head"], ["check"]):
        print(f"[{label}] alembic {' '.join(args)}", flush=True)
        if subprocess.run([ALEMBIC, *args], cwd=REPO, env=env, check=False).returncode != 0:
            print(f"[{label}] FAILED: alembic {' '.join(args)}", flush=True)
            return False
    return True


def main() -> int:
    ok = True
    with tempfile.TemporaryDirectory(prefix="s4c-migrations-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        ok &= check(f"sqlite:///{base / 'fresh.sqlite'}", "sqlite")
        server = os.environ.get("S4C_TEST_POSTGRES_URL")
        cluster = None
        if not server:
            cluster = PostgresCluster.start(base / "postgres")
            server = cluster.url()
        name = f"s4c_migrations_{uuid.uuid4().hex[:8]}"
        try:
            ok &= check(create_database(server, name), "postgresql")
        finally:
            drop_database(server, name)
            if cluster is not None:
                cluster.stop()
    print("migrations check:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
