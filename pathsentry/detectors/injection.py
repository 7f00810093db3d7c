"""Connection integrity of one ``http_probe``: was the answer forged on the path?

An on-path box (ISP DPI, a captive portal, a MITM) that answers plaintext HTTP or a
``ws://`` upgrade in the origin's place leaves **path marks**, the evidence that decides:

- the response's IP TTL differs from the SYN-ACK's in a way the origin's own answers do
  not (``+1``: sent by a box one hop nearer than the server; the origin's usual relation
  is learned, see :mod:`pathsentry.detectors.injection_profile`);
- the origin's own marks are missing: its header set and ``server`` value, learned per
  origin and status from its TLS answers and from the many networks that reach it (the
  ``[[origin]]`` entry is the prior until then);
- the first byte arrived sooner than a round trip to the server allows (below the
  lowest first-byte/handshake ratio of the origin's TLS answers, and ``fast_ratio``);
- two TCP segments carried different bytes for the same sequence range (``seq_conflict``:
  the forged and the genuine answer raced), and the server retransmitted again and again.

**Content evidence** (a WebSocket upgrade not answered ``101``, a status or body other
than the ``[[origin]]``'s) only adds to path marks: a status or body that differs while
every path mark matches the origin's is the origin's own answer (a CDN 503 with its
headers and the SYN-ACK's TTL, a redirect to https, a maintenance page). It is left in
the notes and the flag evidence, and never flags on its own.

Each piece of evidence has a weight in ``[0, 1]``; ``path_score`` is the noisy-OR
``1 - prod(1 - w)`` of the path marks. Content evidence joins the score once
``path_score`` reaches ``path_gate``; the probe is flagged ``path_injection`` when the
score reaches ``flag_score``. An anomaly that many unrelated networks see in the same
minutes, or that another network got the same way (over TLS; no sooner than the round
trip with no mark of a nearer box, or with the same TTL relation), is the origin's
(:mod:`pathsentry.detectors.injection_window`): not flagged,
marked ``origin_wide`` for the cell stage, and the failure's onset (when some network
first saw it) is carried in the notes of later answers, so that the cell stage can tell
the first answers of an ISP that saw it before the others
(:mod:`pathsentry.detectors.injection_onset`). TLS probes (``https``/``wss``, or the
``protocol`` the reporter saw: TLS on port 80 is TLS, a forged non-TLS segment racing
on port 443 is not) are the control
and the origin's teachers: never flagged, their path evidence is recorded so the cell
stage can contrast them, and their answers teach the origin's marks.

A suspect answer that shows no TTLs and whose first byte came no sooner than the round
trip allows, with no race and no retransmission storm (``unplaced``), carries no path
mark but the origin's missing marks: another box answered, and nothing says it sits
nearer than the server (a forging box races the origin's answer; a box of the origin's
own answers from where the server is or farther). It is recorded, not flagged
(``flag_unplaced`` flags it); its signature is still a witness for other networks'.

A suspect answer whose TTL is below its SYN-ACK's and below the origin's relation, both
sent with the same initial TTL, with no race, storm or first byte sooner than the round
trip (``answer_farther``), was sent from farther than the box that completed the
handshake: a box nearer than the server is not, unless it lowers its TTL on purpose.
It is recorded, not flagged (``flag_answer_farther`` flags it); on a handshake too
short to time, the TTLs alone say so.

A suspect answer whose SYN-ACK came from farther than its line's usual one from that
origin (:mod:`pathsentry.detectors.injection_handshake`: a failover moves the whole
connection, a forging box only the answer), with no mark of a nearer box, is another
server's: not flagged, recorded in the notes (``moved``, ``handshake``); unless the far
box's answers in the window (judged its own, over TLS, or the failure's seen
origin-wide) show other TTL relations than this one's (the window's ``FAILED``
channel): then a box on the path forged into the moved connection.

A suspect answer with no timed mark of a nearer box (no first byte sooner than the round
trip, no race, no storm) is held before it is flagged, and dropped when another
network's later answer witnesses it by the rules above
(:mod:`pathsentry.detectors.injection_hold`): the first answers of a failover box's
outage come before any witness.

The verdict is left in ``Enriched.notes["injection"]`` for
:mod:`pathsentry.detectors.injection_cells`.

This module owns the detector: what it makes of a probe's verdict with the learned
tables, its notes and flag, and its saved state. The evidence and its weighing are
:mod:`pathsentry.detectors.injection_evidence`'s, the weights and thresholds
:mod:`pathsentry.detectors.injection_settings`'s; each learned table is in a module of
its own.

>>> from pathsentry.config import Origin
>>> from pathsentry.schemas import parse_event
>>> origin = Origin(host="ws.example.com", expect_ws_status=101,
...                 expect_server="cloudflare", expect_headers=["server", "cf-ray"])
>>> probe = parse_event({"kind": "http_probe", "event_id": "p1",
...     "ts": "2026-03-02T10:15:00+09:00", "src_ip": "203.0.113.7",
...     "target": {"host": "ws.example.com", "port": 80, "scheme": "ws"},
...     "request": "ws_upgrade", "status": 200, "header_names": ["content-type"],
...     "connect_ms": 12.0, "ttfb_ms": 2.5, "ttl": {"syn_ack": 52, "response": 53}})
>>> v = assess(probe, origin, InjectionSettings())
>>> v.suspect, round(v.score, 3), [e.code for e in v.evidence]
(True, 0.921, ['origin_marks', 'ttl_delta', 'fast_answer', 'ws_status'])
>>> v.evidence[1].reason.split(": ")[1]
'sent by a box 1 hop nearer than the server'
>>> {k: v.evidence[1].detail[k] for k in ("delta", "expected_deltas")}
{'delta': 1, 'expected_deltas': [0]}
"""

from __future__ import annotations

from collections.abc import Hashable, Set
from typing import Any

from pathsentry.config import Origin
from pathsentry.detectors import register
from pathsentry.detectors.addresses import ip_text
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.detectors.injection_evidence import (
    Evidence,
    Verdict,
    assess,
    frozen_marks,
    noisy_or,
    prior_marks,
    profile_key,
    ttl_delta,
    weigh,
)
from pathsentry.detectors.injection_handshake import (
    HandshakeJudgement,
    Handshakes,
    HandshakeSettings,
)
from pathsentry.detectors.injection_hold import Held, HeldFlags, HoldSettings
from pathsentry.detectors.injection_onset import FailureOnsets
from pathsentry.detectors.injection_profile import (
    Expectation,
    OriginProfiles,
    ProfileSettings,
)
from pathsentry.detectors.injection_saved import (
    check_handshakes,
    check_held,
    check_onsets,
    check_profiles,
)
from pathsentry.detectors.injection_settings import InjectionSettings
from pathsentry.detectors.injection_window import (
    FAILED,
    LATE,
    QUIET,
    TLS,
    NetworkWindow,
    WindowSettings,
    signature,
)
from pathsentry.detectors.settings import load_settings
from pathsentry.schemas import FlaggedEvent, HttpProbe

__all__ = [
    "Evidence",
    "Expectation",
    "InjectionDetector",
    "InjectionSettings",
    "Verdict",
    "assess",
    "noisy_or",
]

NOTES_KEY = "injection"
#: The key under which the configured origins' answers witness each other's.
ORIGINS = "[[origin]]"


def _anomaly(probe: HttpProbe, verdict: Verdict, content: list[Evidence]) -> str | None:
    """What kind of anomaly the answer shows, alike across networks (``None``: none):
    its status when the status or body is not the origin's, else whether the origin's
    marks are missing (timings and TTLs differ from path to path)."""
    if content:
        return f"status {probe.status}"
    if any(e.code == "origin_marks" for e in verdict.evidence):
        return f"marks {probe.status}"
    return None


#: Path marks of a box nearer than the origin (a TTL delta above the origin's is one too).
NEARER = frozenset({"fast_answer", "seq_conflict", "retransmits"})


def _path_anomaly(verdict: Verdict, s: InjectionSettings) -> bool:
    """Whether the answer's path marks reach ``flag_score``; for a TLS answer, besides,
    whether one of them is more than the origin's headers missing. Nothing on the path
    rewrites a TLS answer's headers: a TLS answer whose one mark is their absence, with
    the origin's TTL relation and timing, is the origin's own (a fallback page), and a
    control that counted it would hide a box that forges plaintext answers on the same
    lines behind the origin's failures."""
    if verdict.path_score < s.flag_score:
        return False
    return not verdict.tls or any(e.code != "origin_marks" for e in verdict.evidence)


def _late(probe: HttpProbe, verdict: Verdict, s: InjectionSettings) -> bool:
    """Whether the first byte was timed and came no sooner than the round trip allows:
    on a handshake of at least ``min_connect_ms``, no ``fast_answer``; on a shorter one,
    where timing jitter hides a nearer box's head start, later than the round trip by
    ``min_connect_ms`` at least."""
    if probe.ttfb_ms is None or probe.connect_ms is None:
        return False
    if probe.connect_ms < s.min_connect_ms:
        return probe.ttfb_ms >= probe.connect_ms + s.min_connect_ms
    return not any(e.code == "fast_answer" for e in verdict.evidence)


def _nearer_ttl(e: Evidence) -> bool:
    """Whether ``e`` is an answer TTL nearer than its SYN-ACK's by more than the origin's
    relation allows (a box nearer than the server)."""
    return e.code == "ttl_delta" and e.detail["delta"] > max(e.detail["expected_deltas"])


#: The initial TTLs IP stacks send with (a TTL seen came from the lowest one not below it).
INITIAL_TTLS = (32, 64, 128, 255)


def _initial(ttl: int) -> int:
    """The initial TTL a packet seen with ``ttl`` left with."""
    return next((t for t in INITIAL_TTLS if ttl <= t), INITIAL_TTLS[-1])


def _answer_farther(verdict: Verdict) -> bool:
    """Whether the answer's TTL is below its SYN-ACK's, and below the origin's relation,
    both sent with the same initial TTL (their hop counts differ, not their IP stacks),
    with no race, storm or first byte sooner than the round trip: the box that answered
    is farther than the one that completed the handshake, which a box nearer than the
    server is not (unless it lowers its TTL on purpose).

    >>> from pathsentry.detectors.injection_evidence import Evidence
    >>> def v(syn_ack: int, response: int, *more: Evidence) -> Verdict:
    ...     d = {"syn_ack": syn_ack, "response": response, "delta": response - syn_ack,
    ...          "expected_deltas": [0]}
    ...     return Verdict(1.0, 1.0, True, False, (Evidence("ttl_delta", 0.25, "", d), *more))
    >>> _answer_farther(v(51, 49)), _answer_farther(v(116, 60)), _answer_farther(v(51, 52))
    (True, False, False)
    >>> _answer_farther(v(51, 49, Evidence("seq_conflict", 0.6, "", {})))
    False
    """
    if any(e.code in NEARER for e in verdict.evidence):
        return False
    for e in verdict.evidence:
        if e.code == "ttl_delta":
            d = e.detail
            return (d["delta"] < min(0, *d["expected_deltas"])
                    and _initial(d["syn_ack"]) == _initial(d["response"]))
    return False


def _quiet(verdict: Verdict, late: bool) -> bool:
    """Whether the answer could have shown a box nearer than the origin and showed none:
    ``late`` (:func:`_late`), no race, no retransmission storm, no TTL nearer than the
    origin's relation."""
    return late and not any(e.code in NEARER or _nearer_ttl(e) for e in verdict.evidence)


def _not_the_origins(verdict: Verdict, s: InjectionSettings) -> bool:
    """Whether an answer of a failure seen origin-wide was sent by another box than the
    origin's: its path marks reach ``flag_score``, or any of the origin's marks is
    missing. A failover box answers without some of them (the CDN's headers, its
    ``server`` value) however few are expected; taught as the origin's marks for its
    status, they would strip the marks common to the origin's statuses, which an answer
    of a status never learned is read against, down to those every web server sends."""
    return verdict.path_score >= s.flag_score or any(
        e.code == "origin_marks" for e in verdict.evidence)


def _timed_nearer(verdict: Verdict) -> bool:
    """Whether the answer shows a timed mark of a box nearer than the origin: a first
    byte sooner than the round trip, a race, a retransmission storm (a flag that a later
    answer's witness could not clear is not held)."""
    return any(e.code in NEARER for e in verdict.evidence)


def _raced(verdict: Verdict) -> bool:
    """Whether the answer shows a race or a retransmission storm (a box that answered
    while the server's answer was under way)."""
    return any(e.code in ("seq_conflict", "retransmits") for e in verdict.evidence)


def _moved(verdict: Verdict, hs: HandshakeJudgement | None, late: bool,
           failing: Set[Hashable] = frozenset(), delta: int | None = None) -> bool:
    """Whether a suspect answer is another server's: its connection ended farther than
    its line's usual SYN-ACK, and no mark of a nearer box says otherwise (a race, a
    first byte sooner than the round trip). An answer TTL nearer than its own SYN-ACK's
    by more than the origin's relation is the other box's own relation only when the
    first byte could have shown a nearer box and came no sooner than the round trip of
    that farther handshake (``late``, :func:`_late`: a box nearer than where the
    connection ended would have answered within its own, shorter, round trip); else
    a box on the path forged into the connection wherever it ended. A SYN-ACK judged
    only against the origin's other lines (the line's own not learned: a line farther
    than every line learned so far looks the same) counts only on a ``late`` answer.
    While a failure is seen origin-wide, the box it moved connections to answers with
    its own TTL relation on every network's path: ``failing`` holds the TTL deltas of
    the failure's answers to the host in the window, and an answer whose delta is not
    among them is not that box's (a box on the path forged into the moved connection)."""
    if hs is None or not hs.moved or not verdict.suspect:
        return False
    if hs.level != "line" and not late:
        return False
    if failing and delta is not None and delta not in failing:
        return False
    return not any(e.code in NEARER or (not late and _nearer_ttl(e)) for e in verdict.evidence)


class InjectionDetector(Detector):
    """Session stage: flag ``http_probe`` events whose answer was forged on the path."""

    name = "injection"
    consumes = frozenset({"http_probe"})
    stage = "session"

    def __init__(self, ctx: DetectorContext) -> None:
        super().__init__(ctx)
        self.settings, profile, window, handshake, hold = load_settings(
            self.name, ctx.settings(self.name), InjectionSettings, ProfileSettings, WindowSettings,
            HandshakeSettings, HoldSettings)
        self.handshakes = Handshakes(handshake, self.settings.min_connect_ms)
        self.profiles = OriginProfiles(profile, pinned=(o.host for o in ctx.config.origins))
        self.window = NetworkWindow(window)
        self.onsets = FailureOnsets(window.onset_hold_s, window.max_failures)
        self.held = HeldFlags(hold)
        self._priors: dict[str, frozenset[str] | None] = {}

    def _prior(self, host: str, origin: Origin | None) -> frozenset[str] | None:
        if host not in self._priors:
            self._priors[host] = frozen_marks(prior_marks(origin))
        return self._priors[host]

    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        probe = ev.event
        if not isinstance(probe, HttpProbe):
            return None
        s = self.settings
        t = probe.target
        origin = self.ctx.config.origin(t.host)
        pkey = profile_key(probe)
        host = t.host.lower()
        expect = self.profiles.expect(pkey, probe.status, self._prior(host, origin))
        verdict, content = weigh(probe, origin, expect, s)
        net = f"AS{ev.geo.asn}" if ev.geo.asn is not None else f"net:{ev.prefix}"
        anomaly = _anomaly(probe, verdict, content)
        path_anomaly = _path_anomaly(verdict, s)
        syn_ack = None if probe.ttl is None else probe.ttl.syn_ack
        delta = ttl_delta(probe)
        hs = (self.handshakes.judge(host, ev.prefix, syn_ack, probe.connect_ms)
              if self.handshakes.s.handshake_moves else None)
        late = _late(probe, verdict, s)
        moved = _moved(verdict, hs, late, self.window.keys(FAILED, host, ev.ts), delta)
        quiet = _quiet(verdict, late)
        # (no TTLs, a first byte no sooner than the round trip: nothing places the box)
        unplaced = verdict.suspect and quiet and delta is None and not s.flag_unplaced
        # (an answer TTL below its SYN-ACK's: sent from farther than the handshake's end)
        farther = verdict.suspect and _answer_farther(verdict) and not s.flag_answer_farther
        flagged = verdict.suspect and not moved and not unplaced and not farther
        self.window.add(host, net, ev.ts, anomaly, flagged, tls=verdict.tls,
                        tls_anomaly=path_anomaly, far=quiet and delta is not None)
        sig = signature(probe.status, probe.server_header, probe.header_names)
        # (whose answers witness this one's: every configured origin's, one operator's)
        seen = ORIGINS if origin is not None and self.window.s.witness_origins else host
        quiet = quiet and not verdict.tls  # (a TLS answer is a witness of its own)
        # (timed no sooner than the round trip, no race: whatever its TTLs say)
        late_plain = late and not verdict.tls and not _raced(verdict)
        if anomaly is not None and sig is not None and (verdict.tls or quiet):
            self.window.add_signature(TLS if verdict.tls else QUIET, seen, net, ev.ts, sig)
        if anomaly is not None and sig is not None and late_plain:
            self.window.add_signature(LATE, seen, net, ev.ts, (sig, delta))
        ws = self.window.s
        if anomaly is not None and sig is not None:  # (what it witnesses of the answers held)
            self.held.witnessed(seen, net, ev.ts, sig, delta, tls=verdict.tls and ws.tls_witness,
                                quiet=quiet and ws.quiet_witness,
                                late=late_plain and ws.late_witness)
        witness = None if anomaly is None else self.window.tls_witness(seen, net, ev.ts, sig)
        quiet_witness = (self.window.witness(QUIET, seen, net, ev.ts, sig)
                         if anomaly is not None and quiet and self.window.s.quiet_witness
                         else None)
        late_witness = (self.window.late_witness(seen, net, ev.ts, sig, delta)
                        if anomaly is not None and late_plain and quiet_witness is None
                        else None)
        origin_wide = anomaly is not None and (
            witness is not None or quiet_witness is not None or late_witness is not None
            or self.window.origin_wide(host, anomaly, ev.ts))
        # (the relation of the far box's answers: judged its own, or over TLS, or the
        # failure's seen origin-wide)
        if delta is not None and anomaly is not None and (
                moved or origin_wide or (verdict.tls and hs is not None and hs.moved)):
            self.window.add_signature(FAILED, host, net, ev.ts, delta)
        if origin_wide and anomaly is not None:
            self.onsets.seen(host, anomaly, ev.ts, self.window.onset(host, anomaly, ev.ts))
            if verdict.tls and path_anomaly:  # the origin's failure, not this path's
                self.window.unmark_tls(host, net)
                path_anomaly = False
        others = self.window.others(host, net, ev.ts)
        others_tls = None if verdict.tls else self.window.others_tls(host, net, ev.ts)
        base = None if verdict.tls else self.window.baseline(net, ev.ts)
        base_tls = None if verdict.tls else self.window.tls_baseline(net, ev.ts)
        suspect = flagged and not origin_wide
        if anomaly is None and not verdict.suspect and probe.status is not None \
                and probe.header_names is not None:  # the origin's usual answer
            self.handshakes.learn(host, ev.prefix, syn_ack, probe.connect_ms)
        # (a failure answered by another box, without the origin's marks, teaches nothing
        # of the origin's own: its fallback's marks are not what its next errors carry)
        if not verdict.suspect and not (origin_wide and _not_the_origins(verdict, s)):
            ratio = (probe.ttfb_ms / probe.connect_ms
                     if probe.ttfb_ms is not None and probe.connect_ms is not None
                     and probe.connect_ms >= s.min_connect_ms else None)
            self.profiles.learn(pkey, tls=verdict.tls, net=net, status=probe.status,
                                headers=probe.header_names, server=probe.server_header,
                                delta=delta, ratio=ratio)
        ev.notes[NOTES_KEY] = {
            "suspect": suspect,
            "score": round(verdict.score, 4),
            "tls": verdict.tls,
            "path_anomaly": path_anomaly,
            "ttl_delta": delta,
            "status": probe.status,
            "origin_wide": origin_wide,
            "tls_witness": witness,
            "quiet_witness": quiet_witness,
            "late_witness": late_witness,
            "anomaly": anomaly,
            "onsets": self.onsets.carried(ev.ts),
            "others": None if others is None else round(others, 4),
            "others_tls": others_tls,
            "baseline": None if base is None else base[0],
            "baseline_n": None if base is None else base[1],
            "baseline_tls": None if base_tls is None else base_tls[0],
            "baseline_tls_n": None if base_tls is None else base_tls[1],
            "content": [e.code for e in content],
            "moved": moved,
            "unplaced": unplaced,
            "answer_farther": farther,
            "handshake": None if hs is None else hs.detail(),
        }
        out = self.held.due(ev.ts)
        if suspect:
            flag = self._flag(ev, verdict, origin, hs)
            if self.held.s.hold_s > 0 and sig is not None and not _timed_nearer(verdict):
                out += self.held.hold(Held(flag, ev.ts, seen, net, sig, delta, quiet, late_plain))
            else:
                out.append(flag)
        return Findings(flags=out) if out else None

    def _flag(self, ev: Enriched, verdict: Verdict, origin: Origin | None,
              hs: HandshakeJudgement | None) -> FlaggedEvent:
        probe = ev.event
        assert isinstance(probe, HttpProbe)
        t = probe.target
        evidence: dict[str, Any] = {
            "target": f"{t.scheme}://{t.host}:{t.port}",
            "request": probe.request,
            "reporter": probe.reporter,
            "origin_known": origin is not None,
            "prefix": ev.prefix,
            "as_name": ev.geo.as_name,
            **({} if hs is None else {"handshake": hs.detail()}),
            **{e.code: e.detail for e in verdict.evidence},
        }
        return FlaggedEvent(
            event_id=probe.event_id,
            ts=probe.ts,
            kind="path_injection",
            account=ev.account,
            session_id=probe.session_id,
            src_ip=ip_text(probe.src_ip),
            country=ev.geo.country,
            asn=ev.geo.asn,
            score=round(verdict.score, 4),
            reasons=[e.reason for e in verdict.evidence],
            evidence=evidence,
            detector=self.name,
        )

    def flush(self, now: float) -> Findings | None:
        """The flags held ``hold_s`` by ``now`` (:mod:`~.injection_hold`)."""
        due = self.held.due(now)
        return Findings(flags=due) if due else None

    def finish(self, now: float) -> Findings | None:
        """The end of a bounded input: event time moves ``hold_s`` past ``now``, and every
        flag still held is released."""
        return self.flush(now + self.held.s.hold_s)

    # -- state: what was learned of the origins, the failures seen lately ---------------

    def state(self) -> dict[str, Any]:
        return {"profiles": self.profiles.to_json(), "onsets": self.onsets.to_json(),
                "handshakes": self.handshakes.to_json(), "held": self.held.to_json()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; refused whole (:class:`~.saved.StateInvalid`) unless
        every field is as a save writes it."""
        self._check(state)
        check_onsets(state.get("onsets", []))
        if "handshakes" in state:
            check_handshakes(state["handshakes"])
        check_held(state.get("held", []))
        self.profiles.load(state.get("profiles", {}))
        self.onsets.load(state.get("onsets", []))
        self.handshakes.load(state.get("handshakes", {}))
        self.held.load(state.get("held", []))

    @staticmethod
    def _check(state: dict[str, Any]) -> None:
        profiles = state.get("profiles", {})
        if isinstance(profiles, dict) and profiles.get("version") == 1:
            check_profiles(profiles)

    def learned_state(self) -> dict[str, Any]:
        return {"profiles": self.profiles.to_json()}

    def load_learned(self, state: dict[str, Any]) -> None:
        self._check(state)
        self.profiles.load(state.get("profiles", {}), only_new=True)


register(InjectionDetector)
