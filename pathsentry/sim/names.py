"""Account names: ordinary players, serial farm templates, random farm names, families.

>>> import random
>>> serial_names("xiaopai", 3, 3, 1)
['xiaopai001', 'xiaopai002', 'xiaopai003']
>>> family_names(random.Random(3), 3)[0].split("_")[0] == family_names(random.Random(3), 3)[1].split("_")[0]
True
"""

from __future__ import annotations

import random

__all__ = [
    "NameBook",
    "family_names",
    "farm_family_names",
    "popular_stem_names",
    "random_farm_name",
    "serial_names",
]

_GIVEN = ("minsu", "jiwoo", "seoyeon", "hyunwoo", "jisoo", "dohyun", "yuna", "taeyang",
          "eunji", "junho", "haneul", "sora", "minji", "woojin", "chaeyoung", "sangmin",
          "dabin", "yejin", "kyungho", "boram")
_SURNAME = ("kim", "lee", "park", "choi", "jung", "kang", "cho", "yoon", "jang", "lim", "han",
            "oh", "seo", "shin", "kwon")
_WORDS = ("shadow", "tiger", "moon", "sky", "blade", "storm", "mint", "pepper", "cloud", "wolf",
          "rabbit", "knight", "ghost", "dragon", "hunter", "luna", "nova", "ramen", "kimchi",
          "bori", "haru", "pixel", "neon", "frost", "ember", "sonic", "coco", "panda", "maple",
          "cider", "tofu", "aurora", "raven", "otter", "comet", "lotus", "dubu", "gom", "yeti")
_ADJ = ("lazy", "happy", "dark", "silent", "little", "crazy", "blue", "red", "sleepy", "brave",
        "quiet", "lucky", "angry", "tiny", "wild", "sweet", "noble", "mad", "cool", "shy")
_FARM_STEMS = ("xiaopai", "jinbi", "goldbot", "dalian", "mofa", "zhanshi", "baofa", "xiyou",
               "farmer", "tianlong", "longwang", "hanbing")
_HANGUL_STEMS = ("골드", "농부", "작업", "전사", "사냥꾼", "마법", "용사")
_CJK_STEMS = ("金币", "小白", "打金", "工作室", "战士", "法师", "龙王")
_CONSONANTS = "bcdfghjklmnpqrstvwxz"
_VOWELS = "aeiou"


def serial_names(stem: str, width: int, count: int, start: int) -> list[str]:
    """``count`` consecutive serial names ``stem`` + zero-padded number."""
    return [f"{stem}{n:0{width}d}" for n in range(start, start + count)]


def random_farm_name(rng: random.Random) -> str:
    """An unremarkable name with no shared template (farms that avoid serial names)."""
    syl = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 4)))
    tail = str(rng.randint(1, 9999)) if rng.random() < 0.4 else ""
    return syl + tail


def family_names(rng: random.Random, count: int) -> list[str]:
    """Same given name, different surnames (``minsu_kim``, ``minsu_park``…): not a farm."""
    given = rng.choice(_GIVEN)
    return [f"{given}_{s}" for s in rng.sample(_SURNAME, count)]


class NameBook:
    """Hands out unique ordinary player names."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()
        self.stems = list(_FARM_STEMS)
        rng.shuffle(self.stems)

    def claim(self, name: str) -> str:
        self.used.add(name)
        return name

    def player(self) -> str:
        rng = self.rng
        while True:
            style = rng.random()
            if style < 0.3:
                name = rng.choice(_ADJ) + rng.choice(_WORDS)
            elif style < 0.55:
                name = f"{rng.choice(_WORDS)}{rng.randint(1, 99999)}"
            elif style < 0.75:
                name = f"{rng.choice(_GIVEN)}{rng.choice(_SURNAME)}{rng.randint(70, 2009)}"
            elif style < 0.9:
                name = f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}"
            else:
                name = random_farm_name(rng)
            if name not in self.used:
                return self.claim(name)

    def farm_stem(self, index: int) -> str:
        return self.stems[index % len(self.stems)] + ("" if index < len(self.stems) else str(index))


def farm_family_names(rng: random.Random, family: str, stem: str, size: int) -> tuple[list[str], str | None]:
    """``size`` names of one farm in name family ``family`` and the template they share.

    >>> import random
    >>> names, t = farm_family_names(random.Random(1), "serial_middle", "gold", 3)
    >>> t, len(names), all(n.startswith("gold") for n in names)
    ('gold{n}x', 3, True)
    >>> farm_family_names(random.Random(1), "letter_prefix", "mofa", 2)
    (['a_mofa', 'b_mofa'], '{a}_mofa')
    """
    start = rng.choice((0, 1, 1, 7, 21, 101))
    width = rng.choice((2, 3, 4))
    serials = list(range(start, start + size))
    letters = [_letters(k) for k in range(size)]
    if family == "serial_end":
        return [f"{stem}{n:0{width}d}" for n in serials], f"{stem}{{{width}}}"
    if family == "unpadded":
        return [f"{stem}{n}" for n in serials], f"{stem}{{n}}"
    if family == "serial_start":
        return [f"{n:0{width}d}{stem}" for n in serials], f"{{{width}}}{stem}"
    if family == "serial_middle":
        tail = rng.choice(("x", "bot", "kr", "z"))
        return [f"{stem}{n}{tail}" for n in serials], f"{stem}{{n}}{tail}"
    if family == "letter_suffix":
        return [f"{stem}_{a}" for a in letters], f"{stem}_{{a}}"
    if family == "letter_prefix":
        return [f"{a}_{stem}" for a in letters], f"{{a}}_{stem}"
    if family == "separator":
        sep = rng.choice(("_", "-", "."))
        return [f"{stem}{sep}{n:0{width}d}" for n in serials], f"{stem}{sep}{{{width}}}"
    if family == "mixed_case":
        return ([f"{_case(rng, stem)}{n:0{width}d}" for n in serials], f"{stem}{{{width}}} (case varies)")
    if family == "short_stem":
        short = "".join(rng.choice(_CONSONANTS + _VOWELS) for _ in range(rng.randint(2, 3)))
        return [f"{short}{n:0{width}d}" for n in serials], f"{short}{{{width}}}"
    if family in ("hangul", "cjk"):
        local = rng.choice(_HANGUL_STEMS if family == "hangul" else _CJK_STEMS)
        return [f"{local}{n}" for n in serials], f"{local}{{n}}"
    if family == "none":
        return [random_farm_name(rng) for _ in range(size)], None
    raise ValueError(f"unknown farm name family {family!r}")


def _letters(k: int) -> str:
    """``a`` … ``z``, ``aa``, ``ab`` …"""
    out = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        out = chr(97 + r) + out
    return out


def _case(rng: random.Random, stem: str) -> str:
    return "".join(c.upper() if rng.random() < 0.4 else c for c in stem)


def popular_stem_names(rng: random.Random, count: int) -> list[str]:
    """Unrelated honest players who picked the same popular stem (``shadow7``, ``shadow_92``…)."""
    stem = rng.choice(_WORDS)
    seps = ("", "", "_", "x")
    return [f"{stem}{rng.choice(seps)}{rng.randint(1, 9999)}" for _ in range(count)]
