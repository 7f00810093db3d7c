"""Name similarity: templates, serials, consecutive runs and the fuzzy index."""

from __future__ import annotations

import pytest

from pathsentry.detectors.names import (
    NameIndex,
    cohesion,
    consecutive_runs,
    edit_distance,
    features,
    name_similarity,
    regularity,
    serial,
    skeleton,
    template,
)


@pytest.mark.parametrize(
    ("name", "tpl", "skel", "num"),
    [
        ("xiaopai001", "xiaopai{3}", "xiaopai#", 1),
        ("XiaoPai_017", "xiaopai_{3}", "xiaopai#", 17),
        ("jinbi12-0042", "jinbi{2}-{4}", "jinbi##", 42),
        ("minsu_kim", "minsu_kim", None, None),
        ("ab12", "ab{2}", None, 12),
        ("달빛07", "달빛{2}", None, 7),
        ("달빛전사07", "달빛전사{2}", "달빛전사#", 7),
    ],
)
def test_exact_path(name: str, tpl: str, skel: str | None, num: int | None) -> None:
    assert template(name) == tpl
    assert skeleton(name) == skel
    assert serial(name) == num
    f = features(name)
    assert (f.template, f.skeleton, f.serial, f.serial_like) == (tpl, skel, num, skel is not None)


def test_width_and_separators_share_a_skeleton() -> None:
    assert skeleton("xiaopai7") == skeleton("xiaopai007") == skeleton("Xiao.Pai-0007")
    assert skeleton("xiaopai7") != skeleton("xiaopia7")


def test_consecutive_runs_and_regularity() -> None:
    assert consecutive_runs(range(1, 21), min_len=3) == [(1, 20)]
    assert consecutive_runs([5, 1, 3], min_len=2) == []
    assert regularity(list(range(100, 120))) == 1.0
    # a batch with a few holes is still regular
    assert regularity([1, 2, 4, 5, 7, 8, 11]) > 0.8
    # birth years and lucky numbers of unrelated players are not
    assert regularity([1987, 2001, 77, 12, 99999, 4242]) == 0.0


def test_fuzzy_similarity_orders_variants_above_strangers() -> None:
    assert name_similarity("xiaopai001", "xiaopai_99") == 1.0
    assert name_similarity("xiaopai001", "xlaopai002") > name_similarity("xiaopai001", "jinbi01")
    assert name_similarity("minsu_kim", "dragon77") < 0.1
    assert edit_distance("xiaopai", "xiaopai") == 0
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("a" * 30, "b" * 30, limit=4) == 5


def test_cohesion_is_bounded_and_separates() -> None:
    batch = [f"goldbot{i:03d}" for i in range(500)]
    assert cohesion(batch) == 1.0
    assert cohesion(["shadow_wolf", "lazytiger", "minsu_kim", "coco88"]) < 0.15
    assert cohesion(["x"]) == 0.0


def test_name_index_clusters_variants_and_is_bounded() -> None:
    idx = NameIndex(max_clusters=50)
    farm = {idx.assign(n) for n in ("xiaopai001", "xiaopai_002", "xiaopia003", "x1aopai004")}
    assert len(farm) == 1
    assert idx.assign("minsu_kim") != idx.assign("minsu_park")
    for i in range(500):
        idx.assign(f"{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}zz{i}q{i % 7}")
    assert len(idx) <= 50
    # deterministic: a fresh index makes the same decisions
    again = NameIndex(max_clusters=50)
    assert again.assign("xiaopai001") == again.assign("xiaopia003") == "xiaopai#"
