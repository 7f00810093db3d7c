"""Detection logic: pure Python over enriched events (no Kafka, no ClickHouse).

Detector modules register their class with :func:`register`; :func:`build_detectors`
instantiates the enabled ones in pipeline order (session stage first).
"""

from __future__ import annotations

import importlib

from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings, Stage
from pathsentry.detectors.settings import is_enabled

__all__ = [
    "DETECTOR_MODULES",
    "Detector",
    "DetectorContext",
    "Enriched",
    "Findings",
    "Stage",
    "build_detectors",
    "register",
    "registered",
]

#: Detector modules in pipeline order; each registers its detector class on import.
DETECTOR_MODULES: tuple[str, ...] = (
    "pathsentry.detectors.route",
    "pathsentry.detectors.latency",
    "pathsentry.detectors.injection",
    "pathsentry.detectors.injection_cells",
    "pathsentry.detectors.takeover",
    "pathsentry.detectors.farm",
)

_REGISTRY: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Make a detector available to the pipeline (each module calls it after its class:
    a class decorator would leave the class uncompiled in the mypyc build)."""
    _REGISTRY[cls.name] = cls
    return cls


def _rank(cls: type[Detector]) -> int:
    """The place of ``cls``'s module in :data:`DETECTOR_MODULES` (others after them)."""
    m = cls.__module__
    return next((i for i, mod in enumerate(DETECTOR_MODULES)
                 if m == mod or m.startswith(mod + ".")), len(DETECTOR_MODULES))


def registered() -> dict[str, type[Detector]]:
    """Import every detector module and return the registry in pipeline order: the
    order of :data:`DETECTOR_MODULES`, whichever of them something imported first (the
    detectors of one stage see each event in this order, so it is part of the result)."""
    for mod in DETECTOR_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise
    return dict(sorted(_REGISTRY.items(), key=lambda kv: _rank(kv[1])))


def build_detectors(ctx: DetectorContext, only: list[str] | None = None) -> list[Detector]:
    """Instantiate enabled detectors (``[detectors.NAME] enabled = false`` disables one)."""
    out: list[Detector] = []
    for name, cls in registered().items():
        if only is not None and name not in only:
            continue
        if not is_enabled(name, ctx.settings(name)):
            continue
        out.append(cls(ctx))
    out.sort(key=lambda d: 0 if d.stage == "session" else 1)
    for det in [d for d in out if d.after]:  # after the detectors whose notes it reads
        later = [i for i, d in enumerate(out) if d.name in det.after and d.stage == det.stage]
        if later and out.index(det) < max(later):
            out.remove(det)
            out.insert(max(later), det)
    return out
