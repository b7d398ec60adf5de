"""docs/database.md names exactly the tables and columns of the models."""

from __future__ import annotations

import re
from pathlib import Path

from jobs.models import Base

DOC = (Path(__file__).resolve().parents[2] / "docs" / "database.md").read_text()


def documented() -> dict[str, set[str]]:
    sections = re.split(r"^## ", DOC, flags=re.MULTILINE)[1:]
    return {
        section.split("\n", 1)[0].strip(): set(re.findall(r"`([a-z_]+)`", section))
        for section in sections
    }


def test_every_table_and_column_is_documented_and_nothing_else() -> None:
    tables = {table.name: {c.name for c in table.columns} for table in Base.metadata.sorted_tables}
    doc = documented()
    assert set(doc) == set(tables)
    for name, columns in tables.items():
        assert columns <= doc[name], (name, columns - doc[name])
