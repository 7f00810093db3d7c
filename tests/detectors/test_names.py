"""Name primitives: runs, normalisation, consecutive runs, cohesion and the fuzzy index."""

from __future__ import annotations

import pytest

from pathsentry.detectors.names import NameIndex, cohesion, consecutive_runs, normalise, regularity, runs


@pytest.mark.parametrize(
    ("name", "norm"),
    [
        ("xiaopai001", "xiaopai#"),
        ("XiaoPai_017", "xiaopai#"),
        ("jinbi12-0042", "jinbi##"),
        ("minsu_kim", "minsukim"),
        ("달빛전사07", "달빛전사#"),
        ("ｘｉａｏ０７", "xiao#"),  # full-width forms fold (NFKC)
    ],
)
def test_normalise_folds_case_separators_and_digit_runs(name: str, norm: str) -> None:
    assert normalise(name) == norm
    assert "".join(t for _, t in runs(name)) != "" and runs(name)[0][0] in "ad"


def test_consecutive_runs_and_regularity() -> None:
    assert consecutive_runs(range(1, 21), min_len=3) == [(1, 20)]
    assert consecutive_runs([5, 1, 3], min_len=2) == []
    assert regularity(list(range(100, 120))) == 1.0
    # a batch with a few holes is still regular
    assert regularity([1, 2, 4, 5, 7, 8, 11]) > 0.8
    # birth years and lucky numbers of unrelated players are not
    assert regularity([1987, 2001, 77, 12, 99999, 4242]) == 0.0


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
