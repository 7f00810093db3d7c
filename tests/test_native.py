"""The compiled-engine guards of ``pathsentry.native`` on a package laid out on disk: an
extension file without a build record, or beside a source edited since the build, stops
the import; one that matches its recorded source is listed."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

import pytest

from pathsentry.native import StaleExtensionError, check

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pathsentry"
    (pkg / "detectors").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine.py").write_text("X = 1\n")
    (pkg / "detectors" / "__init__.py").write_text("Y = 2\n")
    return pkg


def _record(pkg: Path, modules: dict[str, Path]) -> None:
    manifest = {m: hashlib.sha256(p.read_bytes()).hexdigest() for m, p in modules.items()}
    (pkg / "_compiled.json").write_text(json.dumps(manifest))


def test_no_extension_is_pure(tmp_path: Path) -> None:
    assert check(_package(tmp_path)) == []


def test_extension_without_record_is_refused(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    (pkg / f"engine{SUFFIX}").write_bytes(b"")
    with pytest.raises(StaleExtensionError, match=r"pathsentry\.engine"):
        check(pkg)


def _built_pair(tmp_path: Path) -> Path:
    """A package with the engine and the detectors package built, both recorded."""
    pkg = _package(tmp_path)
    (pkg / f"engine{SUFFIX}").write_bytes(b"")
    (pkg / "detectors" / f"__init__{SUFFIX}").write_bytes(b"")
    _record(pkg, {"pathsentry.engine": pkg / "engine.py",
                  "pathsentry.detectors": pkg / "detectors" / "__init__.py"})
    return pkg


def test_extension_matching_its_source_is_listed(tmp_path: Path) -> None:
    pkg = _built_pair(tmp_path)
    assert check(pkg) == ["pathsentry.detectors", "pathsentry.engine"]


def test_source_edited_after_the_build_is_refused(tmp_path: Path) -> None:
    pkg = _built_pair(tmp_path)
    (pkg / "detectors" / "__init__.py").write_text("Y = 3\n")
    with pytest.raises(StaleExtensionError) as info:
        check(pkg)
    assert "pathsentry.detectors" in str(info.value)
    assert "pathsentry.engine" not in str(info.value)


def test_this_checkout_has_no_stray_extension() -> None:
    """The package under test loads (its import ran the same check) and reports its engine."""
    import pathsentry
    from pathsentry.native import is_compiled

    compiled = check(Path(pathsentry.__file__).parent)
    assert is_compiled() == ("pathsentry.engine" in compiled)
