"""The compiled engine (what ``PATHSENTRY_COMPILE=1 pip install .`` builds with mypyc,
``setup.py``) and its pure Python sources give identical findings on the same simulated
events.

The development install is editable and so pure; this test builds a compiled copy of the
checkout with pip (non-editable, into a directory of its own, reused while the sources
are unchanged: ``build/compiled-<hash>``, or ``PATHSENTRY_COMPILED_SITE`` if set), then
runs the bench's engine child (``python -m pathsentry.bench.engine``) from that copy
twice: once as built, once with ``PATHSENTRY_PURE=1`` (the same copy's ``.py`` sources),
and compares every flag and alert. It is marked slow: mypyc takes minutes here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _sources_key() -> str:
    h = hashlib.sha256()
    for p in sorted([ROOT / "setup.py", ROOT / "pyproject.toml", *(ROOT / "pathsentry").rglob("*.py")]):
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def compiled_site() -> Path:
    given = os.environ.get("PATHSENTRY_COMPILED_SITE")
    if given:
        return Path(given)
    target = ROOT / "build" / f"compiled-{_sources_key()}"
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k != "PATHSENTRY_PURE"}
        env["PATHSENTRY_COMPILE"] = "1"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
            env=env, check=True, cwd=ROOT,
        )
        (target / ".complete").write_text("")
    return target


def _engine(site: Path, payloads: Path, config: Path, *, pure: bool, cwd: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PATHSENTRY_PURE"}
    env["PYTHONPATH"] = str(site)
    if pure:
        env["PATHSENTRY_PURE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pathsentry.bench.engine", "--payloads", str(payloads), "--config",
         str(config)],
        env=env, cwd=cwd, capture_output=True, check=False, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_compiled_and_pure_engines_find_the_same(compiled_site: Path, tmp_path: Path) -> None:
    from pathsentry.bench.run import bench_world, world_payloads

    config = bench_world(1500, 3, str(tmp_path))
    payloads = tmp_path / "payloads.jsonl"
    payloads.write_bytes(b"\n".join(world_payloads(30_000, 1500, 3)) + b"\n")
    compiled = _engine(compiled_site, payloads, config, pure=False, cwd=tmp_path)
    pure = _engine(compiled_site, payloads, config, pure=True, cwd=tmp_path)
    assert compiled["compiled"] is True
    assert pure["compiled"] is False
    assert compiled["flags"] > 0 and compiled["alerts"] > 0
    assert (pure["flags"], pure["alerts"], pure["digest"]) == (
        compiled["flags"], compiled["alerts"], compiled["digest"])
