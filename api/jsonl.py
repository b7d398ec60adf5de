"""Decoding request bodies: strict JSON documents and JSONL read line by line from a stream.

JSONL is never read whole: `iter_jsonl` pulls one line at a time (bounded length) and yields
its 1-based line number with the decoded value, so a 50,000-line upload costs one line of
text at a time. Malformed input raises `ApiProblem` (400) naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from api.problems import ApiProblem, ErrorItem

MAX_LINE_BYTES = 4 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class JsonlLine:
    number: int  # 1-based
    value: Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _where(line: int | None) -> str:
    return f"line {line}: " if line is not None else ""


def decode_json(raw: bytes, *, line: int | None = None) -> Any:
    """Decode one UTF-8 JSON document strictly (no NaN/Infinity); 400 problem on failure."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"{_where(line)}not valid UTF-8 (byte {exc.start + 1} of the line)"
        raise ApiProblem(
            400, "invalid-encoding", message, [ErrorItem(message=message, line=line)]
        ) from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        message = f"{_where(line)}not valid JSON: {exc.msg} (column {exc.colno})"
    except (ValueError, RecursionError) as exc:  # over-long integers, NaN, absurd nesting
        message = f"{_where(line)}not valid JSON: {exc}"
    raise ApiProblem(400, "invalid-json", message, [ErrorItem(message=message, line=line)])


def iter_jsonl(stream: IO[bytes]) -> Iterator[JsonlLine]:
    """Yield each non-blank line of `stream` decoded as JSON, with its 1-based line number.

    Raises ApiProblem 400 for a line that is not UTF-8, not JSON, or longer than MAX_LINE_BYTES.
    """
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            message = f"line {number}: longer than {MAX_LINE_BYTES} bytes"
            raise ApiProblem(400, "line-too-long", message, [ErrorItem(message, line=number)])
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if not raw.strip():
            continue
        yield JsonlLine(number, decode_json(raw, line=number))
