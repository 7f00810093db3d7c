"""Account-name primitives: runs, serial regularity, n-gram similarity, a MinHash index.

Farm accounts are registered in batches, so their names share a stem and differ in
a serial; the farm detector's name families
(:mod:`pathsentry.detectors.farm.families`) are built on what is here:

- :func:`runs` splits a name into letter runs, digit runs and separators (Unicode
  letters: Hangul and CJK stems work as Latin ones);
- :func:`consecutive_runs` and :func:`regularity` say whether serials run like a
  batch (``1, 2, 4, 5``) or scatter like birth years and lucky numbers;
- :func:`normalise` (letters lower-cased, separators dropped, digit runs as ``#``)
  feeds :func:`ngrams`; :func:`cohesion` is the mean n-gram Jaccard similarity of a
  group's names, and :class:`NameIndex` an online MinHash/LSH index that assigns each
  name to a cluster in O(number of bands), with a bounded number of clusters.

>>> runs("Xiao_Pai-07"), normalise("Xiao_Pai-0017")
([('a', 'Xiao'), ('s', '_'), ('a', 'Pai'), ('s', '-'), ('d', '07')], 'xiaopai#')
>>> consecutive_runs([7, 3, 4, 5, 9, 10, 30])
[(3, 5), (9, 10)]
>>> regularity([1, 2, 3, 5, 40]), regularity([1987, 2001, 77, 12])
(0.8, 0.0)
>>> idx = NameIndex()
>>> a, b, c = idx.assign("xiaopai001"), idx.assign("xiaopia002"), idx.assign("dragon77")
>>> a == b, a == c
(True, False)

Everything here is pure and deterministic (no process-seeded hashing), so two
workers compute the same clusters. The per-name functions are memoised in bounded
LRU caches (:data:`NAME_CACHE_SIZE` names each): the same accounts log in again and
again, and the farm detector asks about each name several times per event.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import lru_cache

from pathsentry.detectors.bounded import remember

__all__ = [
    "NAME_CACHE_SIZE",
    "NameIndex",
    "cohesion",
    "consecutive_runs",
    "ngrams",
    "normalise",
    "regularity",
    "runs",
]

_RUN = re.compile(r"(\d+)|([^\W\d_]+)|([\W_]+)", re.UNICODE)

#: Names remembered by each memoised per-name function (about 0.3 KiB per entry).
NAME_CACHE_SIZE = 16_384


def runs(name: str) -> list[tuple[str, str]]:
    """Split ``name`` (NFKC) into ``(kind, text)`` runs, kind ``d`` (digits), ``a``
    (letters) or ``s`` (anything else).

    >>> runs("xiao_pai07")
    [('a', 'xiao'), ('s', '_'), ('a', 'pai'), ('d', '07')]
    """
    return list(_runs(name))


@lru_cache(maxsize=NAME_CACHE_SIZE)
def _runs(name: str) -> tuple[tuple[str, str], ...]:
    return tuple([
        ("d", d) if d else ("a", a) if a else ("s", s)
        for d, a, s in _RUN.findall(unicodedata.normalize("NFKC", name))
    ])


@lru_cache(maxsize=NAME_CACHE_SIZE)
def normalise(name: str) -> str:
    """Lower-case letters, no separators, digit runs as one ``#`` (input of the n-grams).

    >>> normalise("Xiao_Pai-0017"), normalise("minsu_kim")
    ('xiaopai#', 'minsukim')
    """
    return "".join("#" if k == "d" else t.lower() for k, t in _runs(name) if k != "s")


def consecutive_runs(numbers: Iterable[int], min_len: int = 2) -> list[tuple[int, int]]:
    """Maximal runs of consecutive integers (``(first, last)``) of at least ``min_len``.

    >>> consecutive_runs([1, 2, 2, 3, 8], min_len=3)
    [(1, 3)]
    """
    nums = sorted(set(numbers))
    out: list[tuple[int, int]] = []
    start = prev = None
    for n in nums:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None and prev is not None and prev - start + 1 >= min_len:
            out.append((start, prev))
        start = prev = n
    if start is not None and prev is not None and prev - start + 1 >= min_len:
        out.append((start, prev))
    return out


def regularity(numbers: Sequence[int], max_gap: int = 2) -> float:
    """Share of serials with another serial at most ``max_gap`` away (0-1).

    A batch of serial accounts scores near 1 even with a few gaps (banned or
    unused accounts); birth years and lucky numbers of unrelated players score
    near 0.

    >>> regularity([10, 11, 13, 14]), regularity([5]), regularity([3, 3])
    (1.0, 0.0, 0.0)
    """
    nums = sorted(set(numbers))
    if len(nums) < 2:
        return 0.0
    close = 0
    for i, n in enumerate(nums):
        left = i > 0 and n - nums[i - 1] <= max_gap
        right = i + 1 < len(nums) and nums[i + 1] - n <= max_gap
        close += left or right
    return close / len(numbers)


def ngrams(name: str, n: int = 3) -> frozenset[str]:
    """Padded character n-grams of the normalised name.

    >>> sorted(ngrams("ab1"))
    ['^ab', 'ab#', 'b#$']
    """
    return _grams(normalise(name), n)


@lru_cache(maxsize=NAME_CACHE_SIZE)
def _grams(norm: str, n: int) -> frozenset[str]:
    """:func:`ngrams` of a normalised name (names that normalise alike share an entry)."""
    s = f"^{norm}$"
    if len(s) <= n:
        return frozenset({s})
    return frozenset([s[i : i + n] for i in range(len(s) - n + 1)])


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def cohesion(names: Sequence[str], max_pairs: int = 64) -> float:
    """Mean n-gram similarity of neighbouring names (sorted), over at most ``max_pairs`` pairs.

    Bounded work whatever the group size; 1.0 for a batch of one template,
    near 0 for unrelated names.

    >>> cohesion(["xiaopai001", "xiaopai002", "xiaopai003"])
    1.0
    >>> cohesion(["minsu_kim", "dragon77", "blue_sky"]) < 0.1
    True
    """
    uniq = sorted({normalise(x) for x in names})
    if len(names) < 2:
        return 0.0
    if len(uniq) == 1:
        return 1.0
    step = max(1, (len(uniq) - 1) // max_pairs)
    sims = [
        _jaccard(ngrams(uniq[i]), ngrams(uniq[i + 1])) for i in range(0, len(uniq) - 1, step)
    ]
    return sum(sims) / len(sims)


class NameIndex:
    """Online clustering of names by MinHash over character n-grams, with LSH bands.

    ``assign(name)`` returns the cluster id of the first earlier name that
    collides with it in any band and whose ``n``-gram Jaccard similarity is at least
    ``threshold``; otherwise ``name`` founds a new cluster (its id is the
    normalised name). Work per name is O(``bands * rows``) hashes plus at most
    ``bands`` similarity checks. At most ``max_clusters`` clusters are kept
    (least recently used evicted), so memory is bounded.

    Parameters
    ----------
    bands, rows
        LSH layout: ``bands * rows`` hash functions; two names with Jaccard
        ``s`` collide in some band with probability ``1 - (1 - s**rows)**bands``.
    threshold
        Minimum ``n``-gram Jaccard to join a cluster (checked against its founder);
        with bigrams, 0.45 joins one-letter typos of 7-letter stems but keeps
        ``minsu_kim`` and ``minsu_park`` apart.
    max_clusters
        Bound on remembered clusters.

    >>> idx = NameIndex(max_clusters=2)
    >>> [idx.assign(n) for n in ("aa_bb1", "cc_dd2", "ee_ff3")]
    ['aabb#', 'ccdd#', 'eeff#']
    >>> len(idx)
    2
    """

    def __init__(
        self,
        bands: int = 8,
        rows: int = 2,
        threshold: float = 0.45,
        max_clusters: int = 4096,
        n: int = 2,
    ) -> None:
        self.n = n
        self.bands = bands
        self.rows = rows
        self.threshold = threshold
        self.max_clusters = max_clusters
        self._buckets: dict[tuple[int, tuple[int, ...]], str] = {}
        self._clusters: OrderedDict[
            str, tuple[frozenset[str], tuple[tuple[int, tuple[int, ...]], ...]]
        ] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clusters)

    def _signature(self, grams: frozenset[str]) -> tuple[tuple[int, tuple[int, ...]], ...]:
        return _lsh_bands(grams, self.bands, self.rows)

    def assign(self, name: str, norm: str | None = None) -> str:
        """Cluster id of ``name`` (see the class docstring); ``norm``: ``normalise(name)``
        when the caller knows it already)."""
        if norm is None:
            norm = normalise(name)
        clusters = self._clusters
        if norm in clusters:  # the common case: a name of a known cluster's founder form
            clusters.move_to_end(norm)
            return norm
        grams = _grams(norm, self.n)  # ngrams(name, self.n)
        bands = self._signature(grams)
        for band in bands:
            cid = self._buckets.get(band)
            if cid is None or cid not in self._clusters:
                continue
            founder, _ = self._clusters[cid]
            if _jaccard(grams, founder) >= self.threshold:
                self._clusters.move_to_end(cid)
                return cid
        self._clusters[norm] = (grams, bands)
        for band in bands:
            if self._buckets.get(band) not in self._clusters:
                self._buckets[band] = norm
        while len(self._clusters) > self.max_clusters:
            _, (_, old_bands) = self._clusters.popitem(last=False)
            for band in old_bands:
                if self._buckets.get(band) not in self._clusters:
                    self._buckets.pop(band, None)
        return norm


@lru_cache(maxsize=NAME_CACHE_SIZE)
def _lsh_bands(grams: frozenset[str], bands: int, rows: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """MinHash signature of ``grams`` cut into ``bands`` bands of ``rows`` hashes.

    Hash function ``i`` is CRC-32 seeded with the CRC-32 of ``i * 0x9E3779B1``
    (8 bytes, little-endian): deterministic across processes. The hashes of each
    n-gram are remembered (:func:`_gram_hashes`): names share most of their n-grams.
    """
    count = bands * rows
    mins = list(map(min, zip(*[_gram_hashes(g, count) for g in grams], strict=True)))
    return tuple((b, tuple(mins[b * rows : (b + 1) * rows])) for b in range(bands))


#: ``(n-gram, count)`` -> its ``count`` seeded CRC-32 hashes (bounded: cleared when full)
_GRAM_HASHES: dict[tuple[str, int], tuple[int, ...]] = {}
_GRAM_HASHES_MAX = 1 << 14


def _gram_hashes(gram: str, count: int) -> tuple[int, ...]:
    """``zlib.crc32(gram.encode(), seed)`` for the first ``count`` seeds of :func:`_seed_crcs`."""
    key = (gram, count)
    out = _GRAM_HASHES.get(key)
    if out is None:
        encoded = gram.encode()
        crc32 = zlib.crc32
        out = remember(_GRAM_HASHES, key, tuple([crc32(encoded, seed) for seed in _seed_crcs(count)]),
                       _GRAM_HASHES_MAX)
    return out


@lru_cache(maxsize=64)
def _seed_crcs(count: int) -> tuple[int, ...]:
    return tuple(zlib.crc32((i * 0x9E3779B1).to_bytes(8, "little")) for i in range(count))
