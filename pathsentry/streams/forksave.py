"""Work that must read the detectors' state at one instant, done off the event loop in a
forked child (a copy-on-write snapshot, as Redis' ``BGSAVE``).

Owns :class:`ForkSaver`: ``await saver.run(work)`` forks the process at the call (the
consistent point: the stages' state only changes between awaits, and the fork is one
synchronous call), runs ``work()`` in the child on its copy-on-write image of the
state, and returns the child's report (a JSON object) when the child exits. The event
loop only forks (one system call copying the page tables: 20 to 55 ms at about 1 GiB
of RSS on the 2-core test machine) and then waits on two file descriptors, a pipe
carrying the report and a pidfd that becomes readable when the child exits; it runs
every other task meanwhile. What ``work`` produces in bulk it writes to files the
caller names; the caller publishes them (renames a file, sends records to Kafka) once the child is done. May
not decide what is saved or where (:mod:`pathsentry.streams.persistence` does).

Why a child and not a thread: building the state is Python code and ``orjson.dumps``
holds the GIL for its whole call, so a thread stalls the loop as long as the loop
would take itself (``zlib`` releases the GIL; compressing in a thread alone helps
little). An incremental build with yields would let the state change between its
parts, and no save could then claim one event clock.

The worker has other threads (Faust's consumer thread, the default executor, chDB's).
Only the forking thread exists in the child, and whatever lock another thread held at
the fork stays locked there; ``work`` must therefore touch only pure Python state and
files (no Kafka client, no chDB, no logging). The child resets the signals the
worker handles (a ``SIGTERM`` to the process group ends it instead of reaching the
parent's loop through the inherited wakeup fd), turns off the garbage collector (a
collection would touch, and so copy, every tracked object), lowers its scheduling
priority (:data:`CHILD_NICE`: on cores it shares with the worker, the worker goes first)
and leaves with ``os._exit`` (no ``atexit``, no buffered output flushed twice).

Memory is accounted honestly: the child reports its private (copied or new) memory
just before it exits, when what it built is still alive (``Private_Dirty`` +
``Private_Clean`` of ``/proc/self/smaps_rollup``, about its peak: freed Python memory
is rarely given back) and its peak RSS (``VmHWM``, shared pages included). Before a
fork the saver asks whether the machine has room (:meth:`ForkSaver.fits`: twice the last
child's private memory, or the parent's whole RSS before the first, must be available);
when it has not, the caller saves on the loop instead.

A child that crashes, exits without a report, or outlives ``timeout_s`` (it is then
killed) is reported in the result, logged and counted (:attr:`ForkSaver.failures`);
it is never fatal and the next save forks again. Where ``os.fork`` is missing (not
POSIX), :attr:`ForkSaver.available` is False and the caller saves on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["ChildResult", "ForkSaver", "available_mib", "rss_mib"]

log = logging.getLogger(__name__)

#: The child's scheduling niceness: a save is not urgent, the worker's own threads (and
#: the broker beside it) are, on the cores they share.
CHILD_NICE = 10


@dataclass
class ChildResult:
    """How one forked save went."""

    ok: bool
    #: what ``work`` returned (its own measures), plus the child's ``memory`` (MiB)
    report: dict[str, Any] = field(default_factory=dict)
    #: why it failed (empty when ok)
    error: str = ""
    #: time the event loop spent in ``os.fork`` (ms) and the parent's RSS then (MiB)
    fork_ms: float = 0.0
    parent_rss_mib: float = 0.0
    #: fork to exit (ms)
    wall_ms: float = 0.0


class ForkSaver:
    """Runs save work in forked children, one at a time, and counts how it went."""

    def __init__(self, timeout_s: float, *, enabled: bool = True) -> None:
        self.timeout_s = timeout_s
        #: forking is possible here and allowed by the configuration
        self.available = enabled and hasattr(os, "fork") and hasattr(os, "pidfd_open")
        self.saves = 0
        self.failures = 0
        #: the last child's private memory (MiB; 0: no child yet)
        self.last_private_mib = 0.0
        self.last: ChildResult | None = None

    def fits(self) -> bool:
        """Whether the machine has room for a child now (see the module's docstring)."""
        need = 2 * self.last_private_mib if self.last_private_mib else rss_mib()
        avail = available_mib()
        return avail is None or avail >= need

    async def run(self, work: Callable[[], dict[str, Any]]) -> ChildResult:
        """Fork, run ``work`` in the child, and return its report once it exits (the loop
        runs other tasks meanwhile). Never raises for what the child does."""
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        rss = rss_mib()
        t0 = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as e:
            os.close(r)
            os.close(w)
            return self._done(ChildResult(False, error=f"fork failed: {e}", parent_rss_mib=rss))
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            os.close(r)
            _child_main(work, w)
        fork_ms = (time.perf_counter() - t0) * 1000
        os.close(w)
        result = ChildResult(False, fork_ms=fork_ms, parent_rss_mib=rss)
        reaped = False
        pidfd: int | None = None
        with contextlib.suppress(ProcessLookupError):  # else already gone: the pipe tells
            pidfd = os.pidfd_open(pid)
        report: asyncio.Future[bytes] | None = None
        exited: asyncio.Future[None] | None = None
        try:
            report, exited = _read_all(loop, r), _readable(loop, pidfd)
            await asyncio.wait((report, exited), timeout=self.timeout_s)
            if not exited.done():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                result.error = f"timed out after {self.timeout_s:g} s (killed)"
                await exited  # the pidfd is readable once it is gone
            raw = await report  # the child is gone: its end of the pipe is closed
            status = _reap(pid)
            reaped = True
            result.wall_ms = (time.perf_counter() - t0) * 1000
            if not result.error:
                result.ok, result.report, result.error = _judge(raw, status)
        finally:
            for fut in (report, exited):
                if fut is not None:
                    fut.cancel()
            loop.remove_reader(r)
            os.close(r)
            if pidfd is not None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
            if not reaped:  # cancelled (the worker stops): the child goes too
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _reap(pid)
        return self._done(result)

    def _done(self, result: ChildResult) -> ChildResult:
        self.last = result
        if result.ok:
            self.saves += 1
            self.last_private_mib = float(result.report.get("memory", {}).get("private_mib", 0.0))
        else:
            self.failures += 1
            log.error("state save in a child process failed (%s); the next save forks again",
                      result.error)
        return result


def _child_main(work: Callable[[], dict[str, Any]], w: int) -> None:  # pragma: no cover
    """The child's whole life: run ``work``, write its report to ``w``, leave."""
    code = 1
    try:
        with contextlib.suppress(ValueError):  # ValueError: not the main thread, none set
            signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        gc.disable()
        with contextlib.suppress(OSError):
            os.nice(CHILD_NICE)
        report = dict(work())
        report["memory"] = _memory()
        payload = orjson.dumps({"ok": True, "report": report}, default=str)
        code = 0
    except BaseException as e:  # everything ends in os._exit below
        payload = orjson.dumps({"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(w, view):]
    finally:
        os._exit(code)


def _judge(raw: bytes, status: int | None) -> tuple[bool, dict[str, Any], str]:
    """(ok, report, error) from what the child wrote and its wait status (None: unknown)."""
    try:
        doc = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        doc = None
    if status is not None and os.WIFSIGNALED(status):
        return False, {}, f"child killed by signal {os.WTERMSIG(status)}"
    code = os.WEXITSTATUS(status) if status is not None else None
    if not isinstance(doc, dict):
        return False, {}, f"child exited (status {code}) without a report"
    if not doc.get("ok") or code not in (0, None):
        return False, {}, f"child failed (status {code}): {doc.get('error', 'no report')}"
    return True, dict(doc.get("report") or {}), ""


def _read_all(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.Future[bytes]:
    """Everything written to the pipe ``fd`` until its writer closes it."""
    os.set_blocking(fd, False)
    done: asyncio.Future[bytes] = loop.create_future()
    parts: list[bytes] = []

    def readable() -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if chunk:
            parts.append(chunk)
            return
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(b"".join(parts))

    loop.add_reader(fd, readable)
    return done


def _readable(loop: asyncio.AbstractEventLoop, fd: int | None) -> asyncio.Future[None]:
    """Resolved once ``fd`` is readable (a pidfd: its process has exited; None: now)."""
    done: asyncio.Future[None] = loop.create_future()
    if fd is None:
        done.set_result(None)
        return done

    def readable() -> None:
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    return done


def _reap(pid: int) -> int | None:
    """The exited (or killed) child's wait status; None when someone else reaped it."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _memory() -> dict[str, float]:  # pragma: no cover - runs in the child
    """This process's private memory and peak RSS (MiB), from /proc (empty elsewhere)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), open("/proc/self/smaps_rollup") as f:
        kib = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f)
               if k in ("Private_Dirty", "Private_Clean", "Rss")}
        out["private_mib"] = round((kib.get("Private_Dirty", 0) + kib.get("Private_Clean", 0)) / 1024, 1)
        out["rss_mib"] = round(kib.get("Rss", 0) / 1024, 1)
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                out["peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)
    return out


def rss_mib() -> float:
    """This process's resident memory (MiB; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return 0.0


def available_mib() -> float | None:
    """Memory the machine can still give (``MemAvailable``, MiB; None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None
