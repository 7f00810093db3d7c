"""Snapshots of the relay detector: its state as JSON and back (a worker restart, a
partition's sessions moving to another worker, learned state shared between workers).

:class:`Snapshots` is mixed into :class:`~.detector.LatencyDetector`: every table is
written as plain rows (a session's login as a minimal login event plus the figures
its full samples gave), checked by :mod:`.saved` before anything is loaded, and the
River model as its node masses (the tree structure is a pure function of the seed
and the feature names).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar

from river import anomaly

from pathsentry.config import AllowEntry, Server
from pathsentry.detectors.base import SessionTable
from pathsentry.detectors.bounded import AlertBook, BoundedLRU
from pathsentry.detectors.latency.baselines import Baseline, OverheadBook
from pathsentry.detectors.latency.model import QueuedHalfSpaceTrees
from pathsentry.detectors.latency.saved import (
    check_latency_learned,
    check_latency_share,
    check_latency_state,
    restored_baseline,
)
from pathsentry.detectors.latency.state import Session
from pathsentry.detectors.saved import AllowList
from pathsentry.enrich.geo import GeoInfo
from pathsentry.schemas import Login, parse_event

__all__ = ["Snapshots"]

_intern = sys.intern


class Snapshots(SessionTable):
    """JSON snapshots of the detector's tables and model (the detector's base class)."""

    name: ClassVar[str]
    _model_features: ClassVar[tuple[str, ...]]
    cfg: dict[str, Any]
    history_len: int
    baselines: BoundedLRU[str, Baseline]
    overhead: OverheadBook
    prefix_gaps: BoundedLRU[str, tuple[Any, ...]]
    sessions: BoundedLRU[str, Session]
    accounts: BoundedLRU[str, tuple[Any, ...]]
    alerts: AlertBook
    model: anomaly.HalfSpaceTrees
    hst: QueuedHalfSpaceTrees
    _allow: AllowList
    _server: Callable[[str], Server | None]

    def _new_model(self) -> anomaly.HalfSpaceTrees:
        raise NotImplementedError

    def _set_login(
        self, sess: Session, key: str, login: Login, geo: GeoInfo, prefix: str,
        server: Server | None, allowed: AllowEntry | None, route: Any,
    ) -> float | None:
        raise NotImplementedError

    def _judge_physics(self, sess: Session) -> float | None:
        raise NotImplementedError

    def _model_state(self) -> dict[str, Any]:
        self.hst.sync()
        m = self.model
        return {
            "features": sorted(self._model_features) if m.trees else [],
            "counter": m.counter,
            "first_window": m._first_window,
            "mass": [[[n.l_mass, n.r_mass] for n in nodes] for nodes in m._tree_nodes],
        }

    def _load_model(self, snap: dict[str, Any]) -> None:
        # Tree structure is a pure function of the seed and the feature names, so
        # rebuilding with the same seed and overwriting the node masses restores it.
        self.model = self._new_model()
        self.hst = QueuedHalfSpaceTrees(self.model)
        if not snap.get("features"):
            return
        self.model.learn_one({f: 0.5 for f in snap["features"]})  # type: ignore[no-untyped-call]
        for nodes, masses in zip(self.model._tree_nodes, snap["mass"], strict=True):
            for node, (lm, rm) in zip(nodes, masses, strict=True):
                node.l_mass, node.r_mass = lm, rm
        self.model.counter = int(snap["counter"])
        self.model._first_window = bool(snap["first_window"])

    def state(self) -> dict[str, Any]:
        """A JSON snapshot. A session's login is kept as a minimal login event (its
        minimum and maximum app RTT as the only samples) plus the 10th percentile, sample
        count and overhead key."""
        sessions = [self._session_row(sid, s) for sid, s in self.sessions.items()]
        return {
            "version": 1,
            "baselines": [[k, b.snapshot()] for k, b in self.baselines.items()],
            "overhead": self.overhead.snapshot(),
            "prefix_gaps": [[k, list(v)] for k, v in self.prefix_gaps.items()],
            "sessions": sessions,
            "accounts": self._accounts_rows(),
            "alerts": self.alerts.state(),
            "model": self._model_state(),
        }

    def _session_table(self) -> OrderedDict[str, Session]:
        return self.sessions._d

    def learned_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "baselines": [[k, b.snapshot()] for k, b in self.baselines.items()],
            "overhead": self.overhead.snapshot(),
            "prefix_gaps": [[k, list(v)] for k, v in self.prefix_gaps.items()],
            "accounts": self._accounts_rows(),
            "model": self._model_state(),
        }

    def load_learned(self, state: dict[str, Any]) -> None:
        """Baselines, server overheads and account histories this detector lacks (while it
        has room), and the model when its own has learned nothing yet."""
        if state.get("version") != 1:
            return
        check_latency_learned(state)
        for key, snap in state.get("baselines", []):
            if self.baselines.peek(key) is None and len(self.baselines) < self.baselines.cap:
                self.baselines.put(key, restored_baseline(snap, key))
        self.overhead.load(state.get("overhead", {}), only_new=True)
        for key, rows in state.get("prefix_gaps", []):
            if self.prefix_gaps.peek(key) is None and len(self.prefix_gaps) < self.prefix_gaps.cap:
                self.prefix_gaps.put(key, tuple(rows))
        self._load_accounts(state.get("accounts", []), only_new=True)
        if not self.model.trees:
            self._load_model(state.get("model", {}))

    def _accounts_rows(self) -> list[list[Any]]:
        return [[k, {"recent": [(a[i], a[i + 1]) for i in range(1, len(a), 2)], "flagged": a[0]}]
                for k, a in self.accounts.items()]

    def _load_accounts(self, rows: list[list[Any]], *, only_new: bool = False) -> None:
        keep = 2 * self.history_len
        for key, acc in rows:
            if only_new and (self.accounts.peek(key) is not None or len(self.accounts) >= self.accounts.cap):
                continue
            recent: list[Any] = []
            for s, v in acc["recent"]:
                recent += (s, float(v))
            if len(recent) > keep:
                recent = recent[len(recent) - keep:] if keep > 0 else []
            self.accounts.put(key, (int(acc["flagged"]), *recent))

    def _session_row(self, sid: str, s: Session) -> dict[str, Any]:
        login = None
        if s.event_id is not None:
            login = {
                "event": {
                    "kind": "login", "event_id": s.event_id, "ts": s.ts.isoformat(),
                    "src_ip": str(s.src_ip), "session_id": s.session_id, "account": s.account,
                    "server_id": s.server_id, "tcp_rtt_ms": s.tcp,
                    "app_rtt_ms": ([s.app_min, s.app_second, s.app_min + s.app_spread] if s.app_spread
                                   else [s.app_min]),
                },
                "app_rtt_p10_ms": s.app_p10, "app_rtt_samples": s.app_n, "overhead_key": s.oh_key,
                "geo": asdict(s.geo), "prefix": s.prefix,
                "allowed": s.allowed.model_dump() if s.allowed else None,
                "notes": {} if s.route is None else {"route": s.route},
            }
        probes = s.probes or []
        return {"id": sid, "login": login, "score": s.score, "flagged": s.flagged,
                "probes": [{"vantage": probes[i], "method": probes[i + 1],
                            "min_ms": probes[i + 2], "samples": probes[i + 3]}
                           for i in range(0, len(probes), 4)]}

    def load_sessions(self, state: Any) -> None:
        """Add one partition's sessions (refused whole unless every field is as saved)."""
        if isinstance(state, dict) and state.get("version") == 1:
            logins = check_latency_share(state)
            for row in state.get("sessions", []):
                self._load_session_row(row, logins.get(row["id"]))

    def _load_session_row(self, row: dict[str, Any], event: Login | None = None) -> None:
        """Add one saved session (``event``: its login, parsed already)."""
        sess = Session()
        sess.score, sess.flagged = row["score"], row["flagged"]
        probes: list[Any] = []
        for p in row["probes"]:
            probes += (_intern(p["vantage"]), _intern(p["method"]), p["min_ms"], p["samples"])
        sess.probes = probes or None
        key = row["id"]
        snap = row["login"]
        if snap is not None:
            if event is None:
                parsed = parse_event(snap["event"])
                assert isinstance(parsed, Login)
                event = parsed
            self._set_login(
                sess, key, event, GeoInfo(**snap["geo"]), snap["prefix"],
                self._server(event.server_id),
                self._allow.entry(event.src_ip),  # from the configuration, not the state
                (snap.get("notes") or {}).get("route"),
            )
            if "app_rtt_p10_ms" in snap:  # a minimal event: the full samples' figures
                sess.app_p10, sess.app_n = snap["app_rtt_p10_ms"], int(snap["app_rtt_samples"])
                sess.oh_key = _intern(snap.get("overhead_key") or sess.server_id)
                self._judge_physics(sess)
        self.sessions.put(key, sess)

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (refused whole, :class:`~pathsentry.detectors.saved.StateInvalid`,
        unless every field is as a save writes it; a baseline whose sketches give no RTT
        is refused as it is read, so load into a fresh detector)."""
        if state.get("version") != 1:
            return
        logins = check_latency_state(state, self.name)
        self.baselines.clear()
        for key, snap in state.get("baselines", []):
            self.baselines.put(key, restored_baseline(snap, key))
        self.overhead.load(state.get("overhead", {}))
        self.prefix_gaps.clear()
        for key, rows in state.get("prefix_gaps", []):
            self.prefix_gaps.put(key, tuple(rows))
        self.sessions.clear()
        for row in state.get("sessions", []):
            self._load_session_row(row, logins.get(row["id"]))
        self.accounts.clear()
        self._load_accounts(state.get("accounts", []))
        self.alerts.load_state(state.get("alerts", []))
        self._load_model(state.get("model", {}))
