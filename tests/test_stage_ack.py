"""A stage run acknowledges each input envelope once, when the last of its items is stored."""

from __future__ import annotations

import asyncio

from pathsentry.streams.pipeline import _ack_all, _Held


def _held(name: str, remaining: int, acked: list[str]) -> _Held:
    async def ack() -> None:
        acked.append(name)
    return _Held(ack, remaining, 0)


def test_each_envelope_acknowledged_once_in_order_of_its_last_item() -> None:
    acked: list[str] = []
    a, b, c = _held("a", 3, acked), _held("b", 2, acked), _held("c", 2, acked)
    # c's second item is not in this run: c stays unacknowledged
    ack = _ack_all([a, b, a, c, b, a])
    assert ack is not None
    asyncio.run(ack())
    assert acked == ["b", "a"]
    assert (a.remaining, b.remaining, c.remaining) == (0, 0, 1)
    later = _ack_all([c])
    assert later is not None
    asyncio.run(later())
    assert acked == ["b", "a", "c"]


def test_nothing_to_acknowledge() -> None:
    assert _ack_all([]) is None
