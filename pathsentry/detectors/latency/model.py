"""The relay detector's River anomaly model: :class:`~river.anomaly.HalfSpaceTrees`
over squashed residual features, learned in queued vectorised batches and scored on
flattened trees (:class:`QueuedHalfSpaceTrees`), and the feature row of a session
(:func:`features`).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
from river import anomaly
from river.tree.padded import PaddedBranch

from pathsentry.detectors.bounded import remember

__all__ = ["FEATURES", "QueuedHalfSpaceTrees", "features"]

#: The anomaly model's features, in the order rows of them are given.
FEATURES = ("baseline_z", "gap", "gap_ratio", "physics_excess", "vantage_violation")


def features(
    gap_excess: float | None, x_gap: float | None, z: float | None, worst: float | None,
    phys_feat: float,
) -> tuple[float, ...]:
    """The anomaly model's features (squashed residuals: ``squash(x, scale)`` is
    ``x / (x + scale)`` for ``x >= 0``), in :data:`FEATURES` order. ``gap_excess`` is the
    cross-layer gap beyond the server's learned overhead (ms)."""
    if gap_excess is None or x_gap is None:
        gap_ratio = gap = 0.0
    else:
        gap_ratio = x_gap if x_gap > 0.0 else 0.0
        gap = gap_excess if gap_excess > 0.0 else 0.0
        gap = gap / (gap + 20.0)
    if z is None:
        z = 0.0
    else:
        z = z if z > 0.0 else 0.0
        z = z / (z + 3.0)
    if worst is None:
        worst = 0.0
    else:
        worst = worst if worst > 0.0 else 0.0
        worst = worst / (worst + 500.0)
    return (z, gap, gap_ratio, phys_feat, worst)


class QueuedHalfSpaceTrees:
    """Learning for a River :class:`~river.anomaly.HalfSpaceTrees`, queued and
    applied to all trees in one vectorised pass; scoring on flattened trees.

    HalfSpaceTrees scores with the masses of the previous window (``r_mass``);
    the current window's counts (``l_mass``) are only read when the window pivots,
    by a snapshot, or to route a point that lacks a feature. So learned points can
    wait in a queue (never longer than the window) and be walked down every tree
    at once with numpy right before one of those moments: the model ends up with
    exactly the masses one ``learn_one`` per point gives, for a fraction of the
    cost. Once the trees are flattened (node feature, threshold, children), the
    masses live in arrays here and are written back into River's nodes only when
    River itself needs them (:meth:`sync`): a snapshot, or a point that lacks a
    feature. A point with every feature is scored by the same walk as River's over
    the flat lists; as ``r_mass`` only changes when the window pivots, scores are
    memoised until then. Change the model only through this wrapper.

    >>> from river import anomaly
    >>> a = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=5, seed=1)
    >>> b = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=5, seed=1)
    >>> q = QueuedHalfSpaceTrees(b)
    >>> for i in range(12):
    ...     x = {"u": (i * 0.37) % 1.0, "v": (i * 0.61) % 1.0}
    ...     a.learn_one(x); q.learn(x)
    ...     assert a.score_one(x) == q.score(x)
    ...     assert a.score_one({"u": 0.3}) == q.score({"u": 0.3})
    >>> a.learn_one({"u": 0.5}); q.learn({"u": 0.5})
    >>> q.sync()
    >>> [[(n.l_mass, n.r_mass) for n in t] for t in a._tree_nodes] == [
    ...     [(n.l_mass, n.r_mass) for n in t] for t in b._tree_nodes]
    True
    """

    #: memoised scores kept per window at most
    MEMO_MAX = 4096

    def __init__(self, model: anomaly.HalfSpaceTrees) -> None:
        self.model = model
        #: the queued points' feature values, one row after the other
        self.queue: list[float] = []
        self.queued = 0
        self._features: tuple[str, ...] = ()
        self._row: Callable[[dict[str, float]], tuple[float, ...]] | None = None
        self._nodes: list[Any] = []
        self._layout: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64],
                            npt.NDArray[np.intp], npt.NDArray[np.intp]] | None = None
        self._flat: tuple[list[int], list[int], list[float], list[int], list[int]] | None = None
        #: the masses once the trees are flattened (River's nodes are stale until :meth:`sync`)
        self._l_mass: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._r_mass: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._stale = False
        self._r_list: list[int] | None = None
        self._memo: dict[tuple[float, ...], float] = {}
        #: feature names known to be :attr:`_features` (see :meth:`learn_row`)
        self._names: tuple[str, ...] | None = None

    def learn(self, x: dict[str, float]) -> None:
        m = self.model
        if not m.trees:
            m.learn_one(x)  # type: ignore[no-untyped-call]  # builds the trees
            return
        if self._row is None:
            self._build()
        # read after the branch: inside it the compiled build keeps the attribute narrowed
        # to None across the call that sets it
        row_of = self._row
        assert row_of is not None
        try:
            row = row_of(x)
        except KeyError:  # routed by the current window's masses: learn it now
            self.sync()
            m.learn_one(x)  # type: ignore[no-untyped-call]
            self._pull()
            return
        self.queue += row
        self.queued += 1
        if m.counter + self.queued >= m.window_size:
            self.flush()

    def learn_row(self, names: tuple[str, ...], row: tuple[float, ...]) -> None:
        """:meth:`learn` for a point given as its feature names and values; no dict is
        built when ``names`` are the trees' features."""
        if names is not self._names:
            if self._row is None or names != self._features:
                self.learn(dict(zip(names, row, strict=True)))
                return
            self._names = names
        self.queue += row
        self.queued += 1
        m = self.model
        if m.counter + self.queued >= m.window_size:
            self.flush()

    def score_row(self, names: tuple[str, ...], row: tuple[float, ...]) -> float:
        """:meth:`score` for a point given as its feature names and values."""
        if names is not self._names:
            if self._row is None or names != self._features:
                return self.score(dict(zip(names, row, strict=True)))
            self._names = names
        if self.model._first_window:
            return 0.0
        return self._memo_score(row)

    def _memo_score(self, row: tuple[float, ...]) -> float:
        """The model's score of ``row``, memoised (rows repeat: features are rounded)."""
        memo = self._memo
        score = memo.get(row)
        if score is None:
            score = remember(memo, row, self._score_row(row), self.MEMO_MAX)
        return score

    def score(self, x: dict[str, float]) -> float:
        m = self.model
        if m._first_window:
            return float(m.score_one(x))  # type: ignore[no-untyped-call]  # 0
        if self._row is not None:
            try:
                row = self._row(x)
            except KeyError:
                pass
            else:
                return self._memo_score(row)
        if self.queued and not all(f in x for f in self._features):
            self.flush()
        self._push()
        return float(m.score_one(x))  # type: ignore[no-untyped-call]

    def _score_row(self, row: tuple[float, ...]) -> float:
        """River's ``score_one`` for a point with every feature (``row`` in
        :attr:`_features` order): the same walk and the same sums."""
        m = self.model
        assert self._flat is not None
        roots, feature, threshold, left, right = self._flat
        r_mass = self._r_list
        if r_mass is None:
            r_mass = self._r_list = self._r_mass.tolist()
        size_limit = 0.1 * m.window_size
        height = m.height
        score = 0.0
        for node in roots:
            walk = 0.0
            depth_pow = 1
            for _ in range(height):
                r = r_mass[node]
                walk += r * depth_pow
                if r < size_limit:
                    break
                node = left[node] if row[feature[node]] < threshold[node] else right[node]
                depth_pow <<= 1
            else:
                walk += r_mass[node] * depth_pow
            score += walk
        return float(1 - score / m._max_score)

    def flush(self) -> None:
        """Apply the queued points (and pivot the window if it is full), as River would."""
        k = self.queued
        if not k:
            return
        assert self._layout is not None
        roots, feature, threshold, left, right = self._layout
        m = self.model
        # feature-major values: point i's feature f at f * k + i
        x = np.array(self.queue, dtype=np.float64).reshape(k, len(self._features)).T.ravel()
        n = len(self._nodes)
        rows = np.tile(np.arange(k), len(roots))
        at = np.repeat(roots, k)
        path = [at]
        for _ in range(m.height):
            go_left = x.take(feature.take(at) * k + rows) < threshold.take(at)
            at = np.where(go_left, left.take(at), right.take(at))
            path.append(at)
        self._l_mass += np.bincount(np.concatenate(path), minlength=n)
        self._stale = True
        self.queue.clear()
        self.queued = 0
        m.counter += k
        if m.counter >= m.window_size:
            self._r_mass = self._l_mass
            self._l_mass = np.zeros(n, dtype=np.int64)
            m._first_window = False
            m.counter = 0
            self._r_list = None
            self._memo.clear()

    def sync(self) -> None:
        """Apply the queue and write the masses into River's nodes."""
        self.flush()
        self._push()

    def _push(self) -> None:
        if self._stale:
            for node, lm, rm in zip(self._nodes, self._l_mass.tolist(), self._r_mass.tolist(),
                                    strict=True):
                node.l_mass = lm
                node.r_mass = rm
            self._stale = False

    def _pull(self) -> None:
        """Take the masses from River's nodes (after River changed them)."""
        self._l_mass = np.array([node.l_mass for node in self._nodes], dtype=np.int64)
        self._r_mass = np.array([node.r_mass for node in self._nodes], dtype=np.int64)
        self._stale = False
        self._r_list = None
        self._memo.clear()

    def _build(self) -> None:
        """Flatten the trees into arrays: node feature, threshold and children."""
        m = self.model
        self._nodes = [node for nodes in m._tree_nodes for node in nodes]
        index = {id(node): i for i, node in enumerate(self._nodes)}
        self._features = tuple(sorted({n.feature for n in self._nodes if isinstance(n, PaddedBranch)}))
        if len(self._features) == 1:
            only = self._features[0]
            self._row = lambda x: (x[only],)
        else:
            self._row = itemgetter(*self._features)
        column = {f: j for j, f in enumerate(self._features)}
        n = len(self._nodes)
        feature = np.zeros(n, dtype=np.intp)
        threshold = np.full(n, np.inf)
        left = np.arange(n, dtype=np.intp)
        right = np.arange(n, dtype=np.intp)
        for i, node in enumerate(self._nodes):
            if isinstance(node, PaddedBranch):
                feature[i] = column[node.feature]
                threshold[i] = node.threshold
                left[i], right[i] = (index[id(c)] for c in node.children)
        roots = np.array([index[id(t)] for t in m.trees], dtype=np.intp)
        self._layout = (roots, feature, threshold, left, right)
        self._flat = (roots.tolist(), feature.tolist(), threshold.tolist(), left.tolist(), right.tolist())
        self._pull()

