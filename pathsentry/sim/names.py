"""Account names: ordinary players, serial farm templates, random farm names, families.

>>> import random
>>> serial_names("xiaopai", 3, 3, 1)
['xiaopai001', 'xiaopai002', 'xiaopai003']
>>> family_names(random.Random(3), 3)[0].split("_")[0] == family_names(random.Random(3), 3)[1].split("_")[0]
True
"""

from __future__ import annotations

import random

__all__ = ["NameBook", "family_names", "random_farm_name", "serial_names"]

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
