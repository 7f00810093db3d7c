"""The bench's decode measure: the reference ``parse_event`` (orjson + pydantic) and the
compiled decoder (``pathsentry.schemas.fast``) on the same messages, in this process.

Both are timed in CPU time of this process (``time.process_time``), alternately, in
batches as a worker reads them (each batch's events dropped before the next one), with
Python's automatic collections off (as in a worker); each figure is the best of
``rounds`` runs, so that the machine's other work weighs on neither more than on the other.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DecodeFigures", "format_decode", "measure_decode"]


@dataclass
class DecodeFigures:
    events: int
    batch: int
    #: µs of CPU per event: parse_event, the compiled decoder
    reference_us: float = 0.0
    compiled_us: float = 0.0
    #: of the compiled decoder's time, msgspec's decoding into Structs alone (the rest builds
    #: the pydantic instances the engine takes)
    structs_us: float = 0.0
    #: of the events, those the compiled path handed to parse_event, and those with extra fields
    fallbacks: int = 0
    with_extras: int = 0
    #: compiled µs per event by kind (reference, compiled)
    by_kind_us: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.reference_us / self.compiled_us if self.compiled_us else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": round(self.speedup, 2)}


def _best(runs: Sequence[Callable[[], object]], rounds: int) -> list[float]:
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            t0 = time.process_time()
            run()
            best[i] = min(best[i], time.process_time() - t0)
    return best


def _each(decode: Callable[[Sequence[bytes]], object],
          chunks: Sequence[Sequence[bytes]]) -> Callable[[], None]:
    """Decode every chunk, dropping each result before the next (as a worker does)."""
    def run() -> None:
        for chunk in chunks:
            decode(chunk)
    return run


def measure_decode(payloads: Sequence[bytes], *, batch: int = 500, rounds: int = 3) -> DecodeFigures:
    """µs of CPU per event of both decoders on ``payloads`` (decoded ``batch`` at a time)."""
    from pathsentry.schemas import EventError, parse_event
    from pathsentry.schemas.fast import FastDecoder

    def reference(chunk: Sequence[bytes]) -> list[Any]:
        out: list[Any] = []
        for raw in chunk:
            try:
                out.append(parse_event(raw))
            except EventError as e:
                out.append(e)
        return out

    fig = DecodeFigures(events=len(payloads), batch=batch)
    if not payloads:
        return fig
    probe = FastDecoder()
    decoded = probe.decode(payloads)
    fig.fallbacks, fig.with_extras = probe.fallbacks, probe.with_extras
    fast = FastDecoder()
    chunks = [payloads[i:i + batch] for i in range(0, len(payloads), batch)]
    kinds: dict[str, list[bytes]] = {}
    for raw, ev in zip(payloads, decoded, strict=True):
        kinds.setdefault(type(ev).__name__, []).append(raw)
    gc.collect()
    gc.freeze()
    enabled = gc.isenabled()
    gc.disable()
    try:
        ref_s, fast_s, structs_s = _best([_each(reference, chunks), _each(fast.decode, chunks),
                                          _each(fast.structs, chunks)], rounds)
        for kind, raws in sorted(kinds.items()):
            sub = [raws[i:i + batch] for i in range(0, len(raws), batch)]
            r, f = _best([_each(reference, sub), _each(fast.decode, sub)], rounds)
            fig.by_kind_us[kind] = (round(r / len(raws) * 1e6, 2), round(f / len(raws) * 1e6, 2))
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()
    fig.reference_us = round(ref_s / len(payloads) * 1e6, 2)
    fig.compiled_us = round(fast_s / len(payloads) * 1e6, 2)
    fig.structs_us = round(structs_s / len(payloads) * 1e6, 2)
    return fig


def format_decode(f: DecodeFigures) -> str:
    """The decode figures as lines of text."""
    lines = [
        f"decode, µs of CPU per event over {f.events:,} events (batches of {f.batch}):",
        f"  parse_event (orjson + pydantic)  {f.reference_us:>7.2f}",
        f"  compiled (msgspec)               {f.compiled_us:>7.2f}   ({f.speedup:.2f}x)",
        f"    of which msgspec into Structs  {f.structs_us:>7.2f}   (the rest builds the pydantic models)",
        f"  handed to parse_event / with extra fields  {f.fallbacks:,} / {f.with_extras:,}",
    ]
    lines += ["  by kind: parse_event / compiled"]
    lines += [f"    {k:<12} {r:>7.2f} / {c:.2f}" for k, (r, c) in f.by_kind_us.items()]
    return "\n".join(lines)
