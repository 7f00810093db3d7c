"""The app-RTT baselines of the relay detector: what "normal" looks like from one
neighbourhood.

Owns :class:`Baseline`: running quantiles (p10, p50, p90) and a count of the session
minimum app RTT for one key (a server and /24, ASN or country, and access kind), kept
as raw samples until ``RAW_SAMPLES`` of them or a read, then as three P² sketches; and
its JSON snapshot. Which baseline a login is judged against, and how, is
:mod:`.scoring`'s.
"""

from __future__ import annotations

import base64
from array import array
from typing import Any, ClassVar

from river._river_rust.stats import RsQuantile

__all__ = ["RAW_SAMPLES", "Baseline"]

#: samples a :class:`Baseline` keeps as they came before it builds its sketches (the
#: relay detector reads no baseline with fewer than ``warmup_samples``, 20 by default)
RAW_SAMPLES = 24


class Baseline:
    """Running low/median/high quantiles and a count of session min-RTTs for one key.

    The three P² sketches are River's Rust core (what :class:`river.stats.Quantile`
    wraps), held without the Python wrapper: the same numbers for less memory. They are
    built only once the key has ``RAW_SAMPLES`` samples or its quantiles are read: until
    then the samples are kept as they came, one packed double each (most keys, /24s
    heard from a few times, never get that far; three sketches cost about 0.65 KiB), and
    the sketches are then fed the same samples in the same order, so they hold exactly
    what feeding them all along would have given.

    >>> b = Baseline()
    >>> for x in range(1, 41):
    ...     b.update(float(x))
    >>> b.n, [round(v) for v in b.quantiles()]
    (40, [4, 20, 36])
    >>> Baseline.restore(b.snapshot()).quantiles() == b.quantiles()
    True
    >>> c = Baseline()
    >>> for x in (5.0, 1.0, 3.0):
    ...     c.update(x)
    >>> c.sketched(), Baseline.restore(c.snapshot()).quantiles() == c.quantiles(), c.sketched()
    (False, True, True)
    """

    QS: ClassVar[tuple[float, float, float]] = (0.1, 0.5, 0.9)
    __slots__ = ("_hi", "_lo", "_q10", "_q50", "_q90", "_raw", "key", "n")

    def __init__(self, key: str = "") -> None:
        #: the key it is stored under (sessions share this string instead of a copy)
        self.key = key
        self.n = 0
        #: the samples until the sketches are built (``None`` after)
        self._raw: array[float] | None = array("d")
        self._q10: RsQuantile | None = None
        self._q50: RsQuantile | None = None
        self._q90: RsQuantile | None = None
        self._lo: float | None = None
        self._hi = 0.0

    def update(self, x: float) -> None:
        self.n += 1
        self._lo = None
        raw = self._raw
        if raw is not None:
            raw.append(x)
            if len(raw) >= RAW_SAMPLES:
                self._sketch()
            return
        q10, q50, q90 = self._q10, self._q50, self._q90
        assert q10 is not None and q50 is not None and q90 is not None
        q10.update(x)
        q50.update(x)
        q90.update(x)

    def sketched(self) -> bool:
        """Whether the sketches are built (the raw samples folded into them)."""
        return self._raw is None

    def _fed(self) -> tuple[RsQuantile, RsQuantile, RsQuantile]:
        """The sketches: the built ones, or new ones fed the raw samples (not kept)."""
        q10, q50, q90 = self._q10, self._q50, self._q90
        if q10 is not None and q50 is not None and q90 is not None:
            return q10, q50, q90
        q10, q50, q90 = RsQuantile(0.1), RsQuantile(0.5), RsQuantile(0.9)
        for x in self._raw or ():
            q10.update(x)
            q50.update(x)
            q90.update(x)
        return q10, q50, q90

    def _sketch(self) -> tuple[RsQuantile, RsQuantile, RsQuantile]:
        """Build the sketches (once) and drop the raw samples."""
        qs = self._fed()
        self._q10, self._q50, self._q90 = qs
        self._raw = None
        return qs

    def quantiles(self) -> tuple[float, float, float]:
        """(p10, p50, p90)."""
        if self.n == 0:
            return (0.0, 0.0, 0.0)
        q10, q50, q90 = self._sketch()
        return (float(q10.get()), float(q50.get()), float(q90.get()))

    def bounds(self) -> tuple[float, float]:
        """(p10, p90) to 0.01 ms, as the verdict and its evidence use them; read from the
        sketches once per update."""
        lo = self._lo
        if lo is None:
            if self.n == 0:
                lo, self._hi = 0.0, 0.0
            else:
                q10, _, q90 = self._sketch()
                lo, self._hi = round(float(q10.get()), 2), round(float(q90.get()), 2)
            self._lo = lo
        return lo, self._hi

    def snapshot(self) -> dict[str, Any]:
        # The P² sketch lives in River's Rust core; its byte state is what it pickles.
        return {
            "n": self.n,
            "q": [base64.b64encode(q.__getstate__()).decode() for q in self._fed()],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any], key: str = "") -> Baseline:
        b = cls(key)
        b.n = int(snap["n"])
        qs = b._sketch()
        for q, raw in zip(qs, snap["q"], strict=True):
            q.__setstate__(base64.b64decode(raw))
        return b
