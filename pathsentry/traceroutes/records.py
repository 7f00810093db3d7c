"""Reading traceroute results files into records, one error per bad record.

A file holds a JSON array of records, a JSON object with a ``results`` array (what
the RIPE Atlas API answers with its measurement metadata beside), one record (an
object without ``results`` array) or one JSON object per line (JSONL). A line that
is not JSON is a bad record, not a bad file.

>>> import io
>>> [r.record for r in read_records(io.StringIO('[{"a": 1}, {"a": 2}]'), "f")]
[{'a': 1}, {'a': 2}]
>>> rows = list(read_records(io.StringIO('{"a": 1}\\nnot json\\n'), "f"))
>>> rows[0].record, rows[1].error
({'a': 1}, 'f:2: not JSON (not json)')
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

__all__ = ["RecordError", "Row", "read_records"]


class RecordError(ValueError):
    """A record that cannot be converted, with the reason."""


@dataclass(frozen=True, slots=True)
class Row:
    """One record of a file (``record``), or why it could not be read (``error``)."""

    where: str
    record: Any = None
    error: str | None = None


def read_records(fh: IO[str], name: str) -> Iterator[Row]:
    """The records of one results file, in file order."""
    text = fh.read()
    stripped = text.lstrip()
    if not stripped:
        return
    try:
        whole = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        whole = None
        lines = True
    else:
        lines = False
    if not lines:
        if isinstance(whole, dict) and isinstance(whole.get("results"), list):
            whole = whole["results"]
        if isinstance(whole, list):
            for i, rec in enumerate(whole):
                yield Row(f"{name}[{i}]", rec)
        else:
            yield Row(f"{name}[0]", whole)
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{n}"
        try:
            yield Row(where, orjson.loads(line))
        except orjson.JSONDecodeError:
            yield Row(where, error=f"{where}: not JSON ({line.strip()[:60]})")
