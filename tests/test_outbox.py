"""The outbox: ordered, coalesced, bounded; deliveries before inserts; acks after both."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pathsentry.streams.handoff import Handoff
from pathsentry.streams.outbox import Delivery, Outbox, Pending


class Sink:
    """Records inserts; ``down`` makes writes wait, as ClickHouseSink's retry loop does."""

    def __init__(self) -> None:
        self.inserts: list[tuple[list[Any], list[Any]]] = []
        self.up = asyncio.Event()
        self.up.set()

    async def write(self, flags: list[Any], alerts: list[Any]) -> None:
        await self.up.wait()
        self.inserts.append((list(flags), list(alerts)))


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_batches_coalesce_into_one_insert_and_ack_in_order() -> None:
    async def main() -> tuple[Sink, list[int]]:
        sink, acked = Sink(), []
        box = Outbox(sink, max_insert_rows=100)
        for i in range(5):
            async def ack(i: int = i) -> None:
                acked.append(i)
            await box.put(Pending(flags=[f"f{i}"], alerts=[f"a{i}"], on_durable=ack))
        writer = asyncio.create_task(box.run())
        await box.drain()
        writer.cancel()
        return sink, acked

    sink, acked = _run(main())
    assert acked == [0, 1, 2, 3, 4]
    assert len(sink.inserts) == 1
    assert sink.inserts[0] == ([f"f{i}" for i in range(5)], [f"a{i}" for i in range(5)])


def test_insert_size_is_capped() -> None:
    async def main() -> Sink:
        sink = Sink()
        box = Outbox(sink, max_insert_rows=4)
        for i in range(6):
            await box.put(Pending(flags=[i, i]))
        writer = asyncio.create_task(box.run())
        await box.drain()
        writer.cancel()
        return sink

    sink = _run(main())
    assert [len(f) for f, _ in sink.inserts] == [4, 4, 4]


def test_full_outbox_holds_the_stage_back_and_releases_it() -> None:
    async def main() -> tuple[bool, bool, int]:
        sink = Sink()
        sink.up.clear()  # ClickHouse down
        box = Outbox(sink, max_rows=10)
        writer = asyncio.create_task(box.run())
        for _ in range(5):
            await box.put(Pending(flags=[1, 2]))  # 10 rows: full
        blocked = asyncio.create_task(box.put(Pending(flags=[3])))
        await asyncio.sleep(0.2)
        was_blocked = not blocked.done()
        rows_while_down = box.rows
        sink.up.set()  # ClickHouse back
        await blocked
        await box.drain()
        writer.cancel()
        return was_blocked, blocked.done(), rows_while_down

    was_blocked, released, rows = _run(main())
    assert was_blocked and released
    assert rows == 10


def test_nothing_is_stored_or_acked_before_deliveries_succeed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed delivery is re-sent; the rows wait for it, and so does the ack."""

    async def main() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        sink, events = Sink(), []
        attempts = 0

        async def send() -> asyncio.Future[None]:
            nonlocal attempts
            attempts += 1
            fut: asyncio.Future[None] = loop.create_future()
            if attempts == 1:
                fut.set_exception(ConnectionError("broker went away"))
            else:
                loop.call_later(0.05, fut.set_result, None)
                loop.call_later(0.05, events.append, "delivered")
            return fut

        async def ack() -> None:
            events.append(f"acked after {len(sink.inserts)} insert(s)")

        box = Outbox(sink)
        writer = asyncio.create_task(box.run())
        first = await send()
        await box.put(Pending(alerts=["a"], deliveries=[Delivery(first, send)], on_durable=ack))
        await box.drain()
        writer.cancel()
        return events, attempts

    monkeypatch.setattr("pathsentry.streams.outbox.RESEND_BACKOFF_S", (0.05, 0.1))
    events, attempts = _run(main())
    assert attempts == 2
    assert events == ["delivered", "acked after 1 insert(s)"]


@pytest.mark.parametrize("cap", [1, 5, 50])
def test_handoff_is_bounded_and_single_use(cap: int) -> None:
    h: Handoff[int] = Handoff(max_items=cap)
    keys = [h.put([i]) for i in range(100)]
    assert len(h) == min(cap, 100)
    assert h.take(keys[-1]) == [99]
    assert h.take(keys[-1]) is None  # a redelivered envelope is decoded again
    assert h.take(keys[0]) is None  # evicted
    assert h.take(b"other-worker:1") is None and h.take(None) is None
    other: Handoff[int] = Handoff()
    assert other.put([1]) != h.put([1])  # keys never collide across processes


def test_handoff_forgets_envelopes_nobody_took(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("pathsentry.streams.handoff.time.monotonic", lambda: clock[0])
    h: Handoff[int] = Handoff(max_age_s=10.0)
    old = h.put([1, 2])
    clock[0] = 105.0
    new = h.put([3])
    assert h.pending() == 3
    assert h.pending(109.0) == 3
    assert h.pending(112.0) == 1  # the first envelope went to another worker: forgotten
    assert h.take(old) is None and h.take(new) == [3]
    assert h.pending() == 0
    h.put([4])
    h.clear()
    assert len(h) == 0 and h.pending() == 0


class Clock:
    """A clock the test moves by hand (the outbox's pacing reads it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _settle() -> None:
    """Let every ready task run (the writer wakes on each put)."""
    for _ in range(50):
        await asyncio.sleep(0)


def test_inserts_are_paced_and_batches_arriving_meanwhile_join_the_next_insert() -> None:
    async def main() -> tuple[Sink, list[int], list[int]]:
        sink, clock, acked = Sink(), Clock(), []
        box = Outbox(sink, min_insert_interval_s=3600.0, clock=clock)
        writer = asyncio.create_task(box.run())

        async def ack(i: int) -> None:
            acked.append(i)
        await box.put(Pending(flags=["f0"], on_durable=lambda: ack(0)))
        await _settle()  # the first insert is not held: none before it
        first = len(sink.inserts)
        clock.now = 1.0
        for i in (1, 2):
            await box.put(Pending(flags=[f"f{i}"], alerts=[f"a{i}"], on_durable=lambda i=i: ack(i)))
        await _settle()
        held = len(sink.inserts)
        clock.now = 3600.0
        await box.put(Pending(flags=["f3"], on_durable=lambda: ack(3)))  # wakes the writer
        await box.drain()
        writer.cancel()
        return sink, acked, [first, held]

    sink, acked, (first, held) = _run(main())
    assert (first, held) == (1, 1)  # the second and third batch waited for the interval
    assert sink.inserts == [(["f0"], []), (["f1", "f2", "f3"], ["a1", "a2"])]
    assert acked == [0, 1, 2, 3]


def test_pacing_holds_neither_a_full_outbox_nor_batches_without_rows() -> None:
    async def main() -> tuple[Sink, list[str]]:
        sink, clock, acked = Sink(), Clock(), []
        box = Outbox(sink, max_rows=3, min_insert_interval_s=3600.0, clock=clock)
        writer = asyncio.create_task(box.run())

        async def ack(what: str) -> None:
            acked.append(what)
        await box.put(Pending(flags=["f0"]))
        await _settle()
        clock.now = 1.0
        await box.put(Pending(on_durable=lambda: ack("no rows"), events=10))
        await _settle()  # acknowledged at once: nothing to insert, nothing to wait for
        await box.put(Pending(flags=["f1", "f2", "f3"], on_durable=lambda: ack("full")))
        await _settle()  # 3 rows wait: the outbox is full, the writer does not wait
        writer.cancel()
        return sink, acked

    sink, acked = _run(main())
    assert acked == ["no rows", "full"]
    assert sink.inserts == [(["f0"], []), (["f1", "f2", "f3"], [])]
