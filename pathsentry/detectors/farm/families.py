"""Name families: which account names a farm operator would have minted from one stem.

A batch of farm accounts shares a *stem* and differs in a *mark*: a serial number
anywhere in the name (``xiaopai007``, ``07xiaopai``, ``xiao07pai``), zero-padded or
not, or a rotating letter affix before or after the stem (``abc_a``, ``abc-b``,
``c.abc``, and after ``z``: ``aa_abc``). Case and separators (``_ - .``) vary as
well. :func:`family` reduces a name to ``(stem, serial, template)``:

- the **stem** (the partition key ``tpl:<stem>``) is the name's letter runs,
  case-folded, with separators, digit runs and a rotating letter affix removed.
  Letters are Unicode letters, so Hangul (``작업장``) and CJK (``小白``) stems work
  as Latin ones. A stem needs at least :data:`MIN_STEM` characters and the name a
  mark; a name with no mark (``minsu_kim``, ``lazytiger``) has no family, and a farm
  of such names is carried by its connection pattern alone;
- the **serial** is the last digit run, or the affix read as a bijective base-26
  number (``abc_c`` is 3, ``abc_aa`` 27), so that consecutive batches look regular
  (:func:`~pathsentry.detectors.names.regularity`) whatever the kind of mark;
- the **template** is the name with digit runs as ``#`` and the affix as ``@``
  (``XiaoPai_007`` -> ``xiaopai_#``), the generalised template of the alert.

Honest players who share a popular stem (``shadow123``, ``shadow_77``) share a
family too: what keeps them apart is the connection pattern and the serials (they
arrive from many exits, over hours, with numbers that do not run consecutively; see
:mod:`pathsentry.detectors.farm`). The n-gram similarity of a group's names
(:func:`~pathsentry.detectors.names.cohesion`) and its MinHash name clusters go into
the evidence beside the template.

Pure and deterministic (no process-seeded hashing), memoised per name.

>>> family("XiaoPai_007"), family("07xiaopai"), family("xiao07pai")
(('xiaopai', 7, 'xiaopai_#'), ('xiaopai', 7, '#xiaopai'), ('xiaopai', 7, 'xiao#pai'))
>>> family("abc_b"), family("C.abc"), family("ab_mofa"), family("ab12")
(('abc', 2, 'abc_@'), ('abc', 3, '@.abc'), ('mofa', 28, '@_mofa'), ('ab', 12, 'ab#'))
>>> family("jo_kim")
(None, None, 'jo_kim')
>>> family("작업장01")[0], family("小白-3")[0], family("minsu_kim"), family("a1")[0]
('작업장', '小白', (None, None, 'minsu_kim'), None)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

from pathsentry.detectors.names import NAME_CACHE_SIZE, regularity, runs

__all__ = ["MAX_AFFIX", "MIN_STEM", "family", "family_template", "serial_regularity", "stem"]

#: Minimum stem length in characters (``ab01`` is a family, ``a01`` is not).
MIN_STEM = 2
#: Longest rotating letter affix (``a`` .. ``z``, then ``aa`` .. ``zz``); the stem's
#: longest letter run must be at least two letters longer (``jo_kim`` has no affix).
MAX_AFFIX = 2

_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")


@lru_cache(maxsize=NAME_CACHE_SIZE)
def family(name: str) -> tuple[str | None, int | None, str]:
    """``(stem, serial, template)`` of ``name`` (see the module docstring)."""
    rs = runs(name)
    letters = [i for i, (k, _) in enumerate(rs) if k == "a"]
    affix: int | None = None  # index of a rotating letter affix
    if len(letters) >= 2:
        for i in (letters[0], letters[-1]):
            t = rs[i][1].casefold()
            longest = max(len(rs[j][1]) for j in letters if j != i)
            if len(t) <= MAX_AFFIX and set(t) <= _ASCII_LETTERS and longest >= len(t) + 2:
                affix = i
                break
    parts: list[str] = []
    tpl: list[str] = []
    last_digits: str | None = None
    for i, (k, t) in enumerate(rs):
        if k == "d":
            last_digits = t
            tpl.append("#")
        elif i == affix:
            tpl.append("@")
        elif k == "a":
            parts.append(t.casefold())
            tpl.append(t.casefold())
        else:
            tpl.append(t)
    stem = "".join(parts)
    template = "".join(tpl)
    if last_digits is not None:
        number: int | None = int(last_digits[-9:])
    elif affix is not None:
        number = 0
        for c in rs[affix][1].casefold():  # bijective base 26: a=1 .. z=26, aa=27 ..
            number = number * 26 + ord(c) - ord("a") + 1
    else:
        return None, None, template
    return (stem if len(stem) >= MIN_STEM else None), number, template


def stem(name: str) -> str | None:
    """The family stem of ``name`` (``None``: no family).

    >>> stem("Gold-Farm.12"), stem("dragon")
    ('goldfarm', None)
    """
    return family(name)[0]


def family_template(names: Iterable[str]) -> str | None:
    """The commonest generalised template of ``names`` (``None`` when empty).

    >>> family_template(["abc_a", "abc_b", "ABC_c", "abc07"])
    'abc_@'
    """
    counts = Counter([family(n)[2] for n in names])
    return counts.most_common(1)[0][0] if counts else None


def serial_regularity(serials: Iterable[int | None]) -> float:
    """:func:`~pathsentry.detectors.names.regularity` of the known serials (0 below two).

    >>> serial_regularity([1, 2, None, 4]), serial_regularity([7, None])
    (1.0, 0.0)
    """
    nums = [x for x in serials if x is not None]
    return round(regularity(nums), 3) if len(nums) >= 2 else 0.0
