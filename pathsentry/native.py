"""Which engine runs: the mypyc-compiled modules of a compiled install, or their sources.

``PATHSENTRY_COMPILE=1 pip install --no-build-isolation .`` compiles the engine
(``setup.py``: ``pathsentry/engine.py``, ``pathsentry/detectors/``,
``pathsentry/enrich/``) into extensions that sit beside the
``.py`` files and take precedence on import. This module, run when the package is
imported (before any of those modules), owns two guards:

- ``PATHSENTRY_PURE=1`` at run time loads the ``.py`` sources of a compiled install
  instead of its extensions (the bench times both engines of one install that way);
- otherwise a compiled module is imported only if its source is the one it was built
  from: the build records each source's SHA-256 in ``pathsentry/_compiled.json``, and an
  extension beside a source that has changed since, or without that record (a stray
  in-tree build), stops the import with :class:`StaleExtensionError` instead of running
  code that no longer matches the source.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["COMPILED_DIRS", "StaleExtensionError", "check", "is_compiled", "pure_requested"]

_PKG = Path(__file__).resolve().parent
#: the directories holding compiled modules (relative to the package) and the engine module
COMPILED_DIRS: tuple[str, ...] = ("detectors", "detectors/farm", "detectors/latency", "enrich")
_MANIFEST = "_compiled.json"


class StaleExtensionError(ImportError):
    """A compiled module does not match its source (edited since, or built by hand)."""


def pure_requested() -> bool:
    """``PATHSENTRY_PURE`` is set to something other than ``0``."""
    return os.environ.get("PATHSENTRY_PURE", "") not in ("", "0")


def _extensions(pkg: Path) -> dict[str, Path]:
    """Compiled engine modules present under ``pkg``: dotted name -> extension file."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    out: dict[str, Path] = {}
    for sub in ("", *COMPILED_DIRS):
        d = pkg / sub
        if not d.is_dir():
            continue
        for f in d.iterdir():
            for suf in suffixes:
                if f.name.endswith(suf):
                    stem = f.name[: -len(suf)]
                    rel = f.parent.relative_to(pkg).parts
                    parts = rel if stem == "__init__" else (*rel, stem)
                    out[".".join(("pathsentry", *parts))] = f
                    break  # the longest suffix first (``.cpython-311-...so`` before ``.so``)
    return out


def _source(pkg: Path, module: str) -> Path:
    parts = module.split(".")[1:]
    p = pkg.joinpath(*parts)
    return p / "__init__.py" if (p / "__init__.py").exists() else p.with_suffix(".py")


def check(pkg: Path = _PKG) -> list[str]:
    """The compiled modules under ``pkg`` (sorted); raise :class:`StaleExtensionError`
    if any has no recorded source hash or its source has changed since the build."""
    exts = _extensions(pkg)
    if not exts:
        return []
    manifest_path = pkg / _MANIFEST
    try:
        recorded: dict[str, str] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        recorded = {}
    stale = []
    for module in sorted(exts):
        src = _source(pkg, module)
        want = recorded.get(module)
        if want is None or not src.exists() or hashlib.sha256(src.read_bytes()).hexdigest() != want:
            stale.append(module)
    if stale:
        raise StaleExtensionError(
            f"compiled modules that do not match their sources: {', '.join(stale)} "
            f"(built from other sources, or without {manifest_path}); reinstall "
            f"(PATHSENTRY_COMPILE=1 pip install --no-build-isolation .), delete the extension "
            f"files, or set PATHSENTRY_PURE=1")
    return sorted(exts)


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Import finder that loads the ``.py`` source of a ``pathsentry`` module that also
    has a compiled extension (``PATHSENTRY_PURE=1``)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("pathsentry."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return None
        origin = Path(spec.origin or "")
        package = origin.name.startswith("__init__.")
        name = "__init__" if package else fullname.rsplit(".", 1)[1]
        src = origin.parent / f"{name}.py"
        if not src.exists():
            return None
        return importlib.util.spec_from_file_location(
            fullname, src, submodule_search_locations=[str(origin.parent)] if package else None)


def is_compiled() -> bool:
    """Whether the engine running in this process is the compiled one."""
    import pathsentry.engine

    return not (pathsentry.engine.__file__ or "").endswith(".py")


def install() -> None:
    """What the package runs on import: the source-first finder, or the stale check."""
    if pure_requested():
        if not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
            sys.meta_path.insert(0, _SourceFirst())
    else:
        check()
