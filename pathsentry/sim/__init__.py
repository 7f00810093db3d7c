"""The world simulator and the detection-quality benchmark.

``pathsentry simulate`` writes a deterministic game world (events, truth labels, a
geo prefix table and a config); ``pathsentry evaluate`` replays it through the
detectors and scores them. The public surface:

>>> from pathsentry.sim import WorldSpec, iter_world
>>> first = next(iter_world(WorldSpec(seed=1, accounts=100, hours=1)))
>>> first["kind"] in ("login", "rtt_probe", "traceroute", "http_probe")
True
"""

from pathsentry.sim.model import DEFAULT_START, KST, WorldSpec
from pathsentry.sim.score import score_all
from pathsentry.sim.truth import Truth
from pathsentry.sim.world import World, iter_world, write_world, write_world_files

__all__ = [
    "DEFAULT_START",
    "KST",
    "Truth",
    "World",
    "WorldSpec",
    "iter_world",
    "score_all",
    "write_world",
    "write_world_files",
]
