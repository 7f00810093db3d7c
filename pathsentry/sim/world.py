"""The world simulator: a deterministic, lazily generated game world.

Every account (and every launcher line check) is an actor; each of its sessions
draws from its own ``random.Random`` seeded from (world seed, actor, session
number). A heap holds each actor's next session start, a second heap the events of
the sessions under way, so events come out in ``ts`` order while memory holds one
small entry per actor. The same :class:`WorldSpec` always gives the same bytes.

>>> spec = WorldSpec(seed=3, accounts=200, hours=1)
>>> events = list(iter_world(spec))
>>> events == list(iter_world(spec)), len({e["kind"] for e in events})
(True, 4)
>>> all(a["ts"] <= b["ts"] for a, b in zip(events, events[1:]))
True
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from pathsentry.sim.model import Account, WorldPlan, WorldSpec
from pathsentry.sim.params import DIURNAL
from pathsentry.sim.plan import SERVER_CITIES, plan_world
from pathsentry.sim.sessions import API_BODY_SHA256, GENUINE_BODY_SHA256, Builder, Triple, fmt_ts, kst_hour
from pathsentry.sim.social import SocialLayer, social_enabled

__all__ = [
    "DIURNAL",
    "SimEvent",
    "World",
    "WorldSpec",
    "iter_live",
    "iter_world",
    "write_world",
    "write_world_files",
]

_MS_PER_HOUR = 3_600_000


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One generated event with its truth record."""

    ts_ms: int
    event: dict[str, Any]
    truth: dict[str, Any]


_Item = tuple[int, int, int, int, dict[str, Any], dict[str, Any]]


class World:
    """A planned world; :meth:`stream` generates its events lazily in ``ts`` order."""

    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.plan: WorldPlan = plan_world(spec)
        self.builder = Builder(self.plan)
        self.group_logins: dict[str, list[tuple[int, str]]] = {}
        self.diurnal = spec.params.diurnal
        #: labels, interactions, takeovers and their hard negatives (only when enabled)
        self.social = SocialLayer(self) if social_enabled(spec.params.extra) else None

    # -- actors ----------------------------------------------------------------
    def _next_start(self, rng: random.Random, t: int, daily: float) -> int:
        """Next session start after ``t`` from a diurnal Poisson process (thinning)."""
        diurnal = self.diurnal
        rate_per_ms = daily / sum(diurnal) / _MS_PER_HOUR
        while True:
            t += int(rng.expovariate(rate_per_ms)) + 1
            if t >= self.spec.end_ms or rng.random() < diurnal[kst_hour(t)]:
                return t

    def _rng(self, actor: int, n: int) -> random.Random:
        """The generator of an actor's ``n``-th session (``-1``: its first start time)."""
        return random.Random(f"{self.spec.key}:actor:{actor}:{n}")

    def _burst_start(self, acct: Account, n: int, rng: random.Random) -> int | None:
        assert acct.group is not None
        group = acct.group
        if n >= len(group.bursts):
            return None
        if group.pace_s is None:
            return group.bursts[n] + int(acct.rank * 22_000 + rng.uniform(0, 15_000))
        lo, hi = group.pace_s
        return group.bursts[n] + max(0, int((acct.rank * (lo + hi) / 2 + rng.uniform(-0.5, 0.5) * (hi - lo))
                                            * 1000))

    def _first_start(self, actor: int) -> int | None:
        spec, rng = self.spec, self._rng(actor, -1)
        if actor >= len(self.plan.accounts):
            return spec.start_ms + int(rng.uniform(4, 12) * 60_000)
        acct = self.plan.accounts[actor]
        if acct.group is not None:
            return self._burst_start(acct, 0, rng)
        if acct.forced_first:
            return spec.start_ms + int(rng.uniform(0.0, 0.8) * (spec.end_ms - spec.start_ms))
        return self._next_start(rng, spec.start_ms, acct.daily)

    def _run(self, actor: int, t: int, n: int) -> tuple[list[Triple], int | None]:
        """The events of one session of ``actor`` and the start of its next one."""
        rng = self._rng(actor, n)
        accounts = self.plan.accounts
        if actor >= len(accounts):
            mon = self.plan.monitors[actor - len(accounts)]
            triple = self.builder.line_check(mon.prefix, mon.index, n, t, rng)
            return [triple], t + int(rng.uniform(4, 12) * 60_000)
        acct = accounts[actor]
        triples = self.builder.session(acct, t, n, rng)
        minutes = rng.uniform(60, 240) if acct.klass == "pc_bang" else rng.uniform(15, 150)
        busy_until = max(ts for ts, _, _ in triples) + int(minutes * 60_000)
        if acct.group is not None:
            nxt = self._burst_start(acct, n + 1, rng)
            return triples, None if nxt is None else max(nxt, busy_until)
        return triples, self._next_start(rng, busy_until, acct.daily)

    # -- the stream ------------------------------------------------------------
    def stream(self) -> Iterator[SimEvent]:
        """Every event of the world, in ``ts`` order, with its truth record (and the
        social layer's, when enabled)."""
        base = self._stream()
        return self.social.merge(base) if self.social is not None else base

    def _stream(self) -> Iterator[SimEvent]:
        """Every event of the planned actors, in ``ts`` order, with its truth record.

        Two heaps: the next session start of every actor, and the events of the
        sessions already begun. A session is generated when its start is the
        earliest pending time, so memory holds one entry per actor plus the
        sessions in flight, whatever the length of the world.
        """
        end = self.spec.end_ms
        starts: list[tuple[int, int, int]] = []
        for actor in range(len(self.plan.accounts) + len(self.plan.monitors)):
            t = self._first_start(actor)
            if t is not None and t < end:
                starts.append((t, actor, 0))
        heapq.heapify(starts)
        pending: list[_Item] = []
        groups = {a.name: a.group.group_id for a in self.plan.accounts if a.group is not None}
        while starts or pending:
            if starts and (not pending or starts[0][0] <= pending[0][0]):
                t, actor, n = heapq.heappop(starts)
                triples, nxt = self._run(actor, t, n)
                for k, (ts, ev, tr) in enumerate(triples):
                    heapq.heappush(pending, (ts, actor, n, k, ev, tr))
                if nxt is not None and nxt < end:
                    heapq.heappush(starts, (nxt, actor, n + 1))
                continue
            ts, _actor, _n, _k, ev, tr = heapq.heappop(pending)
            if ts >= end:
                continue
            # a member logs in when its login succeeds (a failed one opens no session)
            if ev["kind"] == "login" and ev["account"] in groups and ev.get("outcome") == "success":
                self.group_logins.setdefault(groups[ev["account"]], []).append((ts, ev["account"]))
            yield SimEvent(ts, ev, tr)

    # -- truth ---------------------------------------------------------------
    def header_truth(self) -> Iterator[dict[str, Any]]:
        """The ``world``, ``cell`` and ``account`` truth records (known before streaming)."""
        spec = self.spec
        yield {"type": "world", "seed": spec.seed, "accounts": spec.accounts, "hours": float(spec.hours),
               "start": fmt_ts(spec.start_ms), "end": fmt_ts(spec.end_ms),
               "params": spec.params.name}
        for cell in self.plan.cells:
            yield {"type": "cell", "asn": cell.asn, "as_name": cell.as_name,
                   "prefixes": [p.cidr for p in cell.prefixes], "ports": list(cell.ports),
                   "hours": list(cell.hours), "answer": cell.answer, "ttl_delta": cell.ttl_delta}
        for a in self.plan.accounts:
            yield {"type": "account", "account": a.name, "label": a.label,
                   "klass": a.label if a.label != "benign" else a.klass,
                   "group_id": a.group.group_id if a.group else None}
        if self.social is not None:
            yield from self.social.accounts

    def group_truth(self) -> Iterator[dict[str, Any]]:
        """The ``group`` truth records (login times are known once the stream is consumed)."""
        for g in self.plan.groups:
            firsts: dict[str, int] = {}
            for ts, acct in self.group_logins.get(g.group_id, []):
                firsts.setdefault(acct, ts)
            order = sorted(firsts.values())
            member = next(a for a in self.plan.accounts if a.group is g)
            yield {"type": "group", "group_id": g.group_id, "label": g.label,
                   "members": list(g.members), "template": g.template, "family": g.family,
                   "pace_s": list(g.pace_s) if g.pace_s else None,
                   "relay": member.exit.mode if member.exit else None,
                   "exit_prefix": member.exit.prefix.cidr if member.exit else None,
                   "first_login_ts": fmt_ts(order[0]) if order else None,
                   "fifth_login_ts": fmt_ts(order[4]) if len(order) >= 5 else None}

    # -- files -----------------------------------------------------------------
    def geo_csv(self) -> str:
        rows = ["cidr,country,asn,as_name,lat,lon,kind"]
        seen: set[str] = set()
        for row in self.plan.net.geo_rows():
            if row.cidr not in seen:
                seen.add(row.cidr)
                rows.append(row.csv())
        return "\n".join(rows) + "\n"

    def config_toml(self) -> str:
        spec, plan = self.spec, self.plan
        lines = [
            f"# Simulated world: seed {spec.seed}, {spec.accounts} accounts, {spec.hours:g} h.",
            'home_countries = ["KR"]',
            'geo = ["csv:geo.csv"]',
            "",
        ]
        for sid in SERVER_CITIES:
            s = plan.servers[sid]
            lines += ["[[server]]", f'id = "{s.id}"', f"lat = {s.point.lat:.4f}",
                      f"lon = {s.point.lon:.4f}", f'country = "{s.country}"',
                      f'city = "{s.city.title()}"', ""]
        lines += ["[[origin]]", f'host = "{self.builder.ws_host}"', "expect_ws_status = 101",
                  'expect_server = "cloudflare"', 'expect_headers = ["server", "cf-ray"]', "",
                  "[[origin]]", f'host = "{self.builder.www_host}"', "expect_status = 200",
                  'expect_server = "cloudflare"', 'expect_headers = ["server", "cf-ray"]',
                  f'expect_body_sha256 = "{GENUINE_BODY_SHA256}"', ""]
        if spec.params.api_origin:
            lines += ["[[origin]]", f'host = "{self.builder.api_host}"', "expect_status = 200",
                      'expect_server = "nginx"', 'expect_headers = ["server", "x-request-id"]',
                      f'expect_body_sha256 = "{API_BODY_SHA256}"', ""]
        for cidr, reason in plan.allow:
            lines += ["[[allow]]", f'cidr = "{cidr}"', f'reason = "{reason}"', ""]
        return "\n".join(lines)


def iter_world(spec: WorldSpec) -> Iterator[dict[str, Any]]:
    """The events of ``spec``'s world (contract-v1 dicts) in ``ts`` order."""
    for sim in World(spec).stream():
        yield sim.event


def iter_live(spec: WorldSpec, segments: int | None = None) -> Iterator[dict[str, Any]]:
    """One world played without end: consecutive segments of ``spec.hours`` each.

    Segment ``k`` starts where segment ``k - 1`` ended and keeps the seed's network,
    servers, farm rooms and exits (so the worker's geo data stays true), with new
    players, farms' names and sessions: relays, farms and forged answers keep arriving.
    ``segments`` bounds the number of segments (None: forever).

    >>> spec = WorldSpec(seed=3, accounts=200, hours=0.5)
    >>> evs = list(iter_live(spec, segments=2))
    >>> later = [e for e in evs if e["ts"] >= fmt_ts(spec.end_ms)]  # the second segment
    >>> len({e["event_id"] for e in evs}) == len(evs), 0 < len(later) < len(evs)
    (True, True)
    >>> all(a["ts"] <= b["ts"] for a, b in zip(evs, evs[1:]))
    True
    """
    k = 0
    while segments is None or k < segments:
        seg = replace(spec, start=spec.start + timedelta(hours=spec.hours * k), segment=spec.segment + k)
        yield from iter_world(seg)
        k += 1


def write_world_files(spec: WorldSpec, out_dir: str | Path, world: World | None = None) -> (
    tuple[Path, Path]
):
    """Write ``geo.csv`` and ``pathsentry.toml`` of ``spec``'s world into ``out_dir``."""
    world = world or World(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geo, toml = out / "geo.csv", out / "pathsentry.toml"
    geo.write_text(world.geo_csv(), encoding="utf-8")
    toml.write_text(world.config_toml(), encoding="utf-8")
    return geo, toml


def write_world(spec: WorldSpec, out_dir: str | Path) -> dict[str, int]:
    """Write ``events.jsonl``, ``truth.jsonl``, ``geo.csv`` and ``pathsentry.toml``.

    Returns the number of events per kind.
    """
    world = World(spec)
    out = Path(out_dir)
    write_world_files(spec, out, world)
    counts: dict[str, int] = {}
    with open(out / "events.jsonl", "wb") as ev_fh, open(out / "truth.jsonl", "wb") as tr_fh:
        for rec in world.header_truth():
            tr_fh.write(orjson.dumps(rec) + b"\n")
        for sim in world.stream():
            ev_fh.write(orjson.dumps(sim.event) + b"\n")
            tr_fh.write(orjson.dumps(sim.truth) + b"\n")
            counts[sim.event["kind"]] = counts.get(sim.event["kind"], 0) + 1
        for rec in world.group_truth():
            tr_fh.write(orjson.dumps(rec) + b"\n")
    return counts
