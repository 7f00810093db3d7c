"""Each detector refuses a well-formed but hostile saved state of its own, field by field,
before it changes anything; and an allow-list mark in a saved session is taken from the
configuration, never from the state.

The states are real ones: a simulated world (ending now) run through the engine, then
one field of one detector's part changed the way someone able to write the state topic
would (a clock at 1e12, a negative count, a method no probe has, a flag no route raised,
an alert id that is another's)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from pathsentry.config import load_config
from pathsentry.detectors.saved import StateInvalid
from pathsentry.engine import Engine
from pathsentry.enrich.enricher import Enricher
from pathsentry.schemas import parse_event
from tests.faults.support import recent_world, sim_events, write_world

#: an ISO time centuries ahead (1e12 s is past what an ISO date can write)
FAR_ISO = "2400-01-01T00:00:00+00:00"


class Saved:
    def __init__(self, tmp: Path) -> None:
        spec = recent_world(seed=7, accounts=300, hours=6)
        self.config = load_config(write_world(tmp, spec), env={})
        engine = Engine(self.config)
        for raw in sim_events(spec, 5000):
            engine.process(parse_event(raw))
        engine.flush()
        self.state: dict[str, Any] = json.loads(json.dumps(engine.state(), default=str))
        self.learned: dict[str, Any] = json.loads(json.dumps(engine.learned_state(), default=str))
        self.shares: dict[str, Any] = json.loads(json.dumps(
            engine.sessions_state(lambda _sid: 0, [0])[0], default=str))
        self.group = json.loads(json.dumps(engine.groups.state(), default=str))

    def fresh(self) -> Engine:
        return Engine(self.config)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return Saved(tmp_path_factory.mktemp("world"))


def _login_session(rows: list[dict[str, Any]], probes: bool = False) -> dict[str, Any]:
    return next(r for r in rows if r["login"] is not None and (r["probes"] or not probes))


def _alert(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return rows[0]


def _route_session(rows: list[list[Any]]) -> dict[str, Any]:
    return next(r[1] for r in rows if r[1]["extra"].get("login_ts"))


#: (detector, what is changed, change applied in place to that detector's state)
HOSTILE: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("latency", "login clock centuries ahead",
     lambda s: _login_session(s["sessions"])["login"]["event"].update(ts=FAR_ISO)),
    ("latency", "negative RTT in a probe",
     lambda s: _login_session(s["sessions"], True)["probes"][0].update(min_ms=-4.0)),
    ("latency", "a probe method no probe has",
     lambda s: _login_session(s["sessions"], True)["probes"][0].update(method="telepathy")),
    ("latency", "more probes than vantages kept",
     lambda s: _login_session(s["sessions"], True).update(
         probes=[_login_session(s["sessions"], True)["probes"][0]] * 17)),
    ("latency", "a score past 1", lambda s: s["sessions"][0].update(score=7.0)),
    ("latency", "flagged without a login",
     lambda s: s["sessions"].insert(0, {"id": "ghost", "login": None, "score": 0.9,
                                        "flagged": True, "probes": []})),
    ("latency", "a login filed under another session",
     lambda s: _login_session(s["sessions"]).update(id="someone-else")),
    ("latency", "an unknown field in a session", lambda s: s["sessions"][0].update(trusted=True)),
    ("latency", "negative baseline count", lambda s: s["baselines"][0][1].update(n=-1)),
    ("latency", "an account score past 1", lambda s: s["accounts"][0][1].update(recent=[["x", 3.0]])),
    ("latency", "a model feature it does not have",
     lambda s: s["model"].update(features=["allow_everyone"])),
    ("latency", "an infinite server overhead vote",
     lambda s: next(iter(s["overhead"]["overheads"].values()))["cost"].append(["x", 1e300])),
    ("latency", "a broken exit-prefix row", lambda s: s["prefix_gaps"][0][1].append("extra")),
    ("latency", "an alert id its subject does not have",
     lambda s: _alert(s["alerts"]).update(alert_id="00000000000000000000")),
    ("latency", "an alert first seen centuries ahead",
     lambda s: _alert(s["alerts"]).update(first_seen=FAR_ISO)),
    ("route", "a joined login clock at 1e12",
     lambda s: _route_session(s["sessions"])["extra"].update(login_ts=1e12)),
    ("route", "a gate mode it does not have",
     lambda s: next(r[1] for r in s["sessions"] if r[1]["route"])["route"].update(gate="trust")),
    ("route", "a flag without the route that raises it",
     lambda s: next(r[1] for r in s["sessions"] if r[1]["flag"]).update(route=None)),
    ("route", "an alert id its subject does not have",
     lambda s: _alert(s["alerts"]).update(alert_id="00000000000000000000")),
    ("takeover", "negative login count", lambda s: s["accounts"][0][1].update(logins=-3)),
    ("takeover", "last login at 1e12",
     lambda s: s["accounts"][0][1].update(last=[1e12, None, None, None, None])),
    ("takeover", "a latitude off the globe",
     lambda s: s["accounts"][0][1].update(last=[1.0, 123.0, 0.0, "KR", None])),
    ("injection", "a mark counted more often than answers",
     lambda s: next(iter(s["profiles"]["origins"][0][1]["tls"]["statuses"].values()))[1].update(
         {"h:server": 10**6})),
    ("injection", "a TTL delta that is not a number",
     lambda s: s["profiles"]["origins"][0][1]["tls"]["deltas"][1].update({"x": 0})),
    ("injection", "an HTTP status the contract does not take",
     lambda s: s["profiles"]["origins"][0][1]["tls"]["statuses"].update({"1000": [0, {}]})),
    ("injection_cells", "more suspect probes than probes",
     lambda s: next(iter(s["groups"].values()))["cells"][0][3].update(k=10**6)),
    ("injection_cells", "an hour 25",
     lambda s: next(iter(s["groups"].values()))["cells"][0].__setitem__(2, 25)),
    ("injection_cells", "a group clock at 1e12",
     lambda s: next(iter(s["groups"].values())).update(last=1e12)),
    ("injection_cells", "borrowed TLS rates past one per probe",
     lambda s: next(iter(s["groups"].values()))["cells"][0][3].update(ref_tls=5.0, ref_tls_n=2)),
    ("injection_cells", "an address owned by a number",
     lambda s: next(iter(s["groups"].values())).update(owners={"ip:1.2.3.4": 7})),
    ("injection_cells", "a confirmed cell that is not bad",
     lambda s: next(iter(s["groups"].values())).update(sure=[["*", 80, 3]], bad=[])),
    ("injection_cells", "an alert level it does not have",
     lambda s: next(g for g in s["groups"].values() if g["published"])["published"].update(
         level="certain")),
    ("farm", "the clock at 1e12", lambda s: s.update(now=1e12)),
    ("farm", "a negative member RTT",
     lambda s: next(m for p in s["partitions"] for g in p["groups"] for m in g["members"]).update(rtt=-5.0)),
    ("farm", "a group score past 1",
     lambda s: next(g for p in s["partitions"] for g in p["groups"]).update(score=3.0)),
]


@pytest.mark.parametrize(("detector", "case", "change"), HOSTILE, ids=[f"{d}: {c}" for d, c, _ in HOSTILE])
def test_hostile_state_is_refused_before_anything_changes(saved: Saved, detector: str, case: str,
                                                          change: Callable[[dict[str, Any]], None]) -> None:
    engine = saved.fresh()
    det = next(d for d in engine.detectors if d.name == detector)
    before = json.dumps(det.state(), default=str)
    hostile = copy.deepcopy(saved.state[detector])
    change(hostile)
    with pytest.raises(StateInvalid):
        det.load_state(hostile)
    assert json.dumps(det.state(), default=str) == before
    det.load_state(copy.deepcopy(saved.state[detector]))  # the unchanged state loads
    assert json.dumps(det.state(), default=str) != before


@pytest.mark.parametrize("detector", ["latency", "takeover", "injection"])
def test_hostile_learned_state_is_refused(saved: Saved, detector: str) -> None:
    engine = saved.fresh()
    det = next(d for d in engine.detectors if d.name == detector)
    hostile = copy.deepcopy(saved.learned[detector])
    dict(HOSTILE_LEARNED)[detector](hostile)
    with pytest.raises(StateInvalid):
        det.load_learned(hostile)
    assert det.learned_state() == saved.fresh().detectors[engine.detectors.index(det)].learned_state()
    det.load_learned(copy.deepcopy(saved.learned[detector]))


HOSTILE_LEARNED: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("latency", lambda s: s["baselines"][0][1].update(q=["AA=="] * 2)),
    ("takeover", lambda s: s["devices"][0].__setitem__(1, "not a list")),
    ("injection", lambda s: s["profiles"]["origins"][0][1].update(n_ratios=-1)),
]


@pytest.mark.parametrize("detector", ["latency", "route"])
def test_hostile_sessions_share_is_refused(saved: Saved, detector: str) -> None:
    engine = saved.fresh()
    det = next(d for d in engine.detectors if d.name == detector)
    hostile = copy.deepcopy(saved.shares[detector])
    if detector == "latency":
        _login_session(hostile["sessions"])["login"]["event"]["ts"] = FAR_ISO
    else:
        _route_session(hostile["sessions"])["extra"]["login_ts"] = 1e12
    with pytest.raises(StateInvalid):
        det.load_sessions(hostile)
    assert det.session_state(lambda _sid: 0, [0]) == {0: {"version": 1, "sessions": []}}
    det.load_sessions(copy.deepcopy(saved.shares[detector]))
    assert det.session_state(lambda _sid: 0, [0])[0]["sessions"]


@pytest.mark.parametrize("how", ["load_state", "load_sessions"])
def test_allow_mark_comes_from_the_configuration_not_the_state(saved: Saved, how: str) -> None:
    """A session marked allow-listed in the state is not, unless the configuration says so;
    an allow-listed address is, whatever the state says."""
    engine = saved.fresh()
    det: Any = next(d for d in engine.detectors if d.name == "latency")
    doc = copy.deepcopy(saved.state["latency"] if how == "load_state" else saved.shares["latency"])
    rows = [r for r in doc["sessions"] if r["login"] is not None]
    for r in rows:
        r["login"]["allowed"] = {"cidr": "0.0.0.0/0", "reason": "trust me"}
    allow = saved.config.allow[0]
    inside = rows[-1]
    inside["login"]["allowed"] = None
    inside["login"]["event"]["src_ip"] = allow.cidr.split("/")[0]
    getattr(det, how)(doc)
    marks = {r["id"]: det.sessions.peek(r["id"]).allowed for r in rows}
    assert marks[inside["id"]] == allow
    enricher = Enricher(saved.config, engine.geo)
    assert marks == {r["id"]: enricher.allowed(ip_address(r["login"]["event"]["src_ip"])) for r in rows}
    assert sum(m is None for m in marks.values()) > len(rows) // 2  # the forged marks are gone


def test_group_stage_clock_past_the_wall_clock_is_refused(saved: Saved) -> None:
    stage = saved.fresh().new_group_stage()
    with pytest.raises(StateInvalid, match="past the wall clock"):
        stage.load_state({**saved.group, "ts": 1e12})
    assert stage.ts == 0.0
    stage.load_state(saved.group)
    assert stage.ts == saved.group["ts"]
