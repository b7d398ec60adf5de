"""The README stays true to the code: its two commands, its configuration table, its links."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_readme_opens_with_exactly_the_two_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.DOTALL)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make run", "make test"]
    assert README.index("```sh") < README.index("\n## ")


def test_configuration_table_lists_every_variable_settings_reads() -> None:
    settings = (REPO / "jobs" / "settings.py").read_text()
    read = set(re.findall(r'env(?:iron)?(?:\.get\(|, )"([A-Z][A-Z0-9_]+)"', settings))
    read -= {"XDG_CACHE_HOME"}  # the standard fallback behind S4C_HOME's default
    table = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", README, re.MULTILINE))
    assert read, "no variables found in jobs/settings.py"
    assert read == table


def test_links_point_at_files_that_exist() -> None:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for doc in docs:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if target.startswith("http"):
                continue
            assert (doc.parent / target).exists(), f"{doc.name}: {target}"
