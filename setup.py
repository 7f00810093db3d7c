"""Build hook: compile the detection engine with mypyc, on request.

``PATHSENTRY_COMPILE=1 pip install --no-build-isolation .`` (and a wheel built so from
this tree, in an environment holding the ``dev`` extras: mypy checks the compiled modules
against what they import) compiles ``pathsentry/engine.py``, ``pathsentry/detectors/``
and ``pathsentry/enrich/`` into C extensions next to their ``.py`` sources; the
pure-Python modules stay in the package and behave identically
(``tests/test_compiled_engine.py`` runs both on the same events). It is opt-in because it
does not pay for its cost by default: about ten minutes of build on two cores for 1.16x
on the engine in the one measured run (README, "Throughput and latency").

Nothing is compiled, and the install is pure Python, when

- ``PATHSENTRY_COMPILE`` is not set (the default), or ``PATHSENTRY_PURE=1`` is;
- the install is editable (``pip install -e .``, what ``scripts/_env.sh`` does): a
  compiled module next to its source would shadow every later edit of it;
- there is no C compiler, mypyc is missing, or compiling fails (a warning says why).

Each compiled install carries ``pathsentry/_compiled.json``, the SHA-256 of every
compiled module's source; ``pathsentry.native`` refuses to import a compiled module
whose source has changed since (or one without that record).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
#: what is compiled (the package ``pathsentry.native`` lists the same)
COMPILED = ["pathsentry/engine.py", "pathsentry/detectors", "pathsentry/enrich"]
#: module -> SHA-256 of the source mypyc compiled
MANIFEST: dict[str, str] = {}
#: commands that build extensions (metadata, sdist and editable builds do not)
BUILDING = {"bdist_wheel", "build", "build_ext", "install"}


def _warn(msg: str) -> None:
    print(f"pathsentry setup: {msg}; installing the pure-Python engine", file=sys.stderr)


def _sources() -> list[Path]:
    out: list[Path] = []
    for entry in COMPILED:
        p = ROOT / entry
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    # the saved-state schemas are pydantic models, off the per-event path: mypyc's C for
    # their module bodies does not compile, so they stay Python
    return [s for s in out if s.stem != "saved" and not s.stem.endswith("_saved")]


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _has_compiler() -> bool:
    cc = os.environ.get("CC", "").split()
    names = cc[:1] or ["cc", "gcc", "clang"]
    return any(shutil.which(n) for n in names)


def _ext_modules() -> list[Any]:
    if os.environ.get("PATHSENTRY_COMPILE", "") in ("", "0"):
        return []
    if os.environ.get("PATHSENTRY_PURE", "") not in ("", "0"):
        return []
    argv = set(sys.argv[1:])
    if "editable_wheel" in argv or "develop" in argv or not argv & BUILDING:
        return []
    if not _has_compiler():
        _warn("no C compiler found")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc (from mypy) is not installed")
        return []
    # the sources as mypyc reads them (what the extensions are built from)
    MANIFEST.update({_module(s): hashlib.sha256(s.read_bytes()).hexdigest() for s in _sources()})
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypy reads its configuration from pyproject.toml here
    try:
        exts: list[Any] = mypycify([str(s.relative_to(ROOT)) for s in _sources()], opt_level="3")
    except Exception as e:  # a type error mypyc refuses: still installable
        _warn(f"mypyc failed ({e})")
        return []
    finally:
        os.chdir(cwd)
    return exts


class OptionalBuildExt(build_ext):
    """Build the compiled engine, or leave it out whole when a C compile fails; on
    success, record the SHA-256 of each compiled module's source beside the package."""

    def run(self) -> None:
        if not self.extensions:
            super().run()
            return
        try:
            super().run()
        except Exception as e:  # no usable compiler, missing headers, ...
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            _warn(f"compiling the engine failed ({e})")
            return
        pkg = ROOT / "pathsentry" if self.inplace else Path(self.build_lib) / "pathsentry"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "_compiled.json").write_text(json.dumps(MANIFEST, indent=1, sort_keys=True) + "\n")


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
