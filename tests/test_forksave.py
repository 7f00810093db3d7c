"""A save's work in a forked child: the event loop goes on while the child works, and a
child that crashes, raises or hangs is reported and counted, never fatal, and the next
save forks again (:mod:`pathsentry.streams.forksave`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from pathsentry.streams.forksave import ChildResult, ForkSaver

pytestmark = pytest.mark.skipif(not ForkSaver(1.0).available, reason="needs os.fork and pidfd_open")


def _gated(r: int, state: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """Work that waits for one byte on the pipe ``r`` (the test decides when the child may
    finish), then reports what it read and the state as the child sees it."""
    def work() -> dict[str, Any]:
        got = os.read(r, 1)
        return {"got": got.decode(), "state": dict(state)}
    return work


def test_the_loop_runs_other_tasks_while_the_child_works() -> None:
    async def main() -> tuple[ChildResult, bool, int, dict[str, Any]]:
        saver = ForkSaver(timeout_s=120)
        r, w = os.pipe()
        state = {"n": 1}
        try:
            save = asyncio.create_task(saver.run(_gated(r, state)))
            ticks = 0

            async def other() -> None:
                nonlocal ticks
                for _ in range(20):
                    ticks += 1
                    await asyncio.sleep(0)

            await other()
            # the child cannot finish before the test writes its byte: the save is still
            # pending, and the loop ran another task meanwhile
            pending = not save.done()
            state["n"] = 2  # the parent's state moves on; the child keeps the fork's instant
            os.write(w, b"x")
            res = await save
        finally:
            os.close(r)
            os.close(w)
        return res, pending, ticks, state

    res, pending, ticks, state = asyncio.run(main())
    assert pending and ticks == 20
    assert res.ok, res.error
    assert res.report["got"] == "x"
    assert res.report["state"] == {"n": 1} and state == {"n": 2}
    assert res.report["memory"]["private_mib"] > 0


def _exits(code: int) -> Callable[[], dict[str, Any]]:
    def work() -> dict[str, Any]:
        os._exit(code)
    return work


def _raises() -> dict[str, Any]:
    raise ValueError("state not serialisable")


@pytest.mark.parametrize("case", ["crash", "raises", "hangs"])
def test_a_failed_child_is_counted_not_fatal_and_the_next_save_works(case: str) -> None:
    async def main() -> tuple[ChildResult, ChildResult, ForkSaver]:
        saver = ForkSaver(timeout_s=1.0)
        r, w = os.pipe()
        try:
            bad = {"crash": _exits(3), "raises": _raises, "hangs": _gated(r, {})}[case]
            failed = await saver.run(bad)
            os.write(w, b"y")  # the next child may read at once
            saver.timeout_s = 60.0  # (the good save's time on a loaded machine is no failure)
            ok = await saver.run(_gated(r, {"after": True}))
        finally:
            os.close(r)
            os.close(w)
        return failed, ok, saver

    failed, ok, saver = asyncio.run(main())
    assert not failed.ok
    want = {"crash": "status 3", "raises": "ValueError: state not serialisable",
            "hangs": "timed out after 1 s (killed)"}[case]
    assert want in failed.error
    assert ok.ok and ok.report["state"] == {"after": True}
    assert (saver.failures, saver.saves) == (1, 1)


def test_disabled_by_configuration() -> None:
    assert not ForkSaver(1.0, enabled=False).available
