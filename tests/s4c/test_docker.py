"""What can be checked of docker/ without a Docker engine: the compose file parses, every
container command is a real `s4c` command line, and the images copy paths that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
import yaml

from s4c.cli import cli

DOCKER = Path(__file__).resolve().parents[2] / "docker"
REPO = DOCKER.parent


def compose() -> dict[str, object]:
    loaded = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def dockerfile_commands() -> list[list[str]]:
    commands = []
    for path in sorted(DOCKER.glob("*.Dockerfile")):
        match = re.search(r"^CMD (\[.*\])$", path.read_text(), re.MULTILINE)
        assert match, f"{path.name} has no exec-form CMD"
        commands.append(json.loads(match.group(1)))
    return commands


def compose_commands() -> list[list[str]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return [s["command"] for s in services.values() if s.get("command", [None])[0] == "s4c"]


def parse_s4c(argv: list[str]) -> None:
    """Parse argv as the CLI would (subcommands and options), without running anything."""
    assert argv[0] == "s4c"
    command: click.Command = cli
    args = argv[1:]
    while isinstance(command, click.Group):
        name, args = args[0], args[1:]
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"no command {name!r} in {argv}"
        command = sub
    command.make_context(command.name or "", list(args))


def test_compose_has_the_services_a_gpu_host_needs() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    assert {"postgres", "redis", "migrate", "api", "worker-0"} <= set(services)
    worker = services["worker-0"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert worker["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


@pytest.mark.parametrize("argv", compose_commands() + dockerfile_commands(), ids=" ".join)
def test_container_commands_are_valid_s4c_command_lines(argv: list[str]) -> None:
    parse_s4c(argv)


def test_images_copy_paths_that_exist() -> None:
    for path in DOCKER.glob("*.Dockerfile"):
        for line in path.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (REPO / source).exists(), f"{path.name}: {source} is missing"
