"""An origin's outage answered by a box of its own, without the CDN's marks.

The failover box's answers miss the CDN's headers and ``server`` value on every line,
like a forged answer; when few networks reach the origin in the same minutes, the
count of networks seeing it cannot say it is the origin's. Two things can: the same
answer given over TLS to another network (a box on one path cannot answer inside
another network's TLS session), and answers that show no mark of a nearer box seen by
networks whose own paths show no forging box (each one's learned rate of answers
flagged with such marks). Both stages are run, with each switched off for contrast.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from pathsentry.sim.evaluate import evaluate_world
from pathsentry.sim.params import draw_params
from pathsentry.sim.world import write_world
from pathsentry.sim.worlds import world_spec
from tests.detectors.test_injection_origin import (
    AT_ONCE,
    ISPS,
    TARGETS,
    World,
    events,
    lines_of,
    run,
)

# (no TLS witness, and each host's answers witness only its own)
NO_WITNESS = "[detectors.injection]\ntls_witness = false\nwitness_origins = false\n"
NO_PATHS = "[detectors.injection]\npaths_alpha = 0.0\nquiet_witness = false\nlate_witness = false\n"


def asn_of(src: str) -> int:
    return next(asn for asn in ISPS if src.startswith(tuple(lines_of(asn))))


def witnessed(w: World) -> set[str]:
    """The plaintext outage answers that another network's TLS outage answer from the
    same host preceded within 9 minutes (the same box, the same status and headers)."""
    seen: list[tuple[datetime, int, str]] = []
    out = set()
    for ev in sorted(events(w), key=lambda e: e["ts"]):
        if ev["server_header"] != "nginx":
            continue
        ts, asn, host = datetime.fromisoformat(ev["ts"]), asn_of(ev["src_ip"]), ev["target"]["host"]
        if ev["target"]["port"] == 443:
            seen.append((ts, asn, host))
        elif any(a != asn and h == host and ts - timedelta(minutes=9) <= t <= ts for t, a, h in seen):
            out.add(ev["event_id"])
    return out


def test_an_unmarked_outage_answered_over_tls_to_another_network_is_the_origins() -> None:
    """Two subscribers per line probing every 30 minutes: about five networks reach the
    origin in ten minutes, so the failover box's answers (one hop nearer than its
    SYN-ACK, as a forging box's) are not seen by enough of them at first. Those after
    another network's TLS answer showed the same status and headers are not flagged
    (flags not held for a later witness, to see the TLS witness alone); held, neither
    are those before it."""
    w = World(outages=[(600, 90, 502, False)], hosts=2, every_min=30)
    alerts, flags = run(w)
    _, at_once = run(w, AT_ONCE)
    _, without = run(w, NO_WITNESS + "hold_s = 0\n")
    after = witnessed(w)
    assert len(after) >= 5
    assert not after & {f.event_id for f in at_once}
    assert after & {f.event_id for f in without}
    assert len(at_once) < len(without) and alerts == []
    assert len(flags) < len(at_once)


def test_an_unmarked_outage_from_no_nearer_box_is_the_origins() -> None:
    """Plaintext probes only (no TLS witness), the box answering at its SYN-ACK's TTL and
    no sooner than the round trip: two or three clean networks seeing it far is too
    much for their own paths (none of them ever showed a nearer box's answer)."""
    plain = tuple(t for t in TARGETS if t[1] != 443)
    w = World(outages=[(600, 90, 502, False)], hosts=2, every_min=30, unmarked_ttl_delta=0,
              targets=plain)
    alerts, flags = run(w)
    _, without = run(w, NO_PATHS)
    assert len(flags) * 3 < len(without) and alerts == []
    # one hop nearer, the same answers are a nearer box's: the paths test leaves them;
    # the same page with the same relation no sooner than the round trip on another
    # network is the origin side's front box (late_witness)
    near = World(outages=[(600, 90, 502, False)], hosts=2, every_min=30, targets=plain)
    without_late = len(run(near, "[detectors.injection]\nlate_witness = false\n")[1])
    assert without_late == len(run(near, NO_PATHS)[1])
    assert len(run(near)[1]) * 3 < without_late


@pytest.mark.parametrize("seed", [224, 243])
def test_a_simulated_failover_names_no_clean_isp(seed: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Simulated worlds whose outages a box of the origin's own answers: without the
    three tests (TLS witness, paths, the connection ending elsewhere than the line's
    usual SYN-ACK), a clean ISP is named (and, in 243, the injector is not); with them,
    or with the SYN-ACKs' alone, the injector alone."""
    spec = world_spec(seed, 1500, 6.0, draw_params(seed, 6.0))
    assert spec.params.failovers
    found = {}
    two = ("tls_witness = false\npaths_alpha = 0.0\nquiet_witness = false\nlate_witness = false\n"
           "flag_unplaced = true\n")
    for name, extra in (("on", ""), ("off", two + "handshake_moves = false\n"),
                        ("handshake", two)):
        wd = tmp_path / name
        write_world(spec, wd)
        if extra:
            toml = wd / "pathsentry.toml"
            toml.write_text(toml.read_text() + "\n[detectors.injection]\n" + extra)
        report = evaluate_world(wd, wd)
        cells = report["detectors"]["injection_cell"]
        found[name] = (cells["tp"], cells["fp"])
    assert found["on"][1] == 0 and found["on"][0] >= 1
    assert found["handshake"][1] == 0 and found["handshake"][0] >= 1
    assert found["off"][1] >= 1


def test_the_failover_boxs_answers_teach_nothing_of_the_origins_errors() -> None:
    """The fallback box answers 502 over TLS too, for 90 minutes; afterwards the CDN's own
    502s (its headers, its ``server``) are the origin's again and are not flagged: the
    box's marks were not learned as the origin's for that status."""
    w = World(outages=[(600, 90, 502, False)], error_rate=0.05, hosts=3)
    _, flags = run(w)
    cdn_502 = {e["event_id"] for e in events(w) if e["status"] == 502
               and e["server_header"] == "cloudflare" and e["target"]["port"] != 443}
    assert len(cdn_502) >= 10
    assert not cdn_502 & {f.event_id for f in flags}


@pytest.mark.parametrize(("ttl", "connect_ms", "ttfb_ms", "first_flagged", "second_flagged"), [
    ({"syn_ack": 52, "response": 52}, 12.0, 25.0, True, False),  # seen far: the origin's box
    (None, 12.0, 25.0, False, False),  # no TTLs, no sooner than the round trip: unplaced
    (None, 12.0, 3.0, True, True),  # no TTLs, sooner than the round trip: a nearer box
    ({"syn_ack": 52, "response": 52}, 1.0, 1.5, True, True),  # a handshake too short to time
    ({"syn_ack": 52, "response": 52}, 1.0, 14.0, True, False),  # ...answered well after it
])
def test_two_networks_see_an_answer_far_only_when_it_shows_where_it_came_from(
        ttl: dict[str, int] | None, connect_ms: float, ttfb_ms: float, first_flagged: bool,
        second_flagged: bool) -> None:
    """Two networks with clean histories get the same answer without the origin's marks
    in the same minute. A first byte no sooner than the round trip (on a handshake too
    short to time, later than it by ``min_connect_ms``) and no TTL nearer than the
    SYN-ACK's make the second one the origin's; two injecting ISPs forging the same page
    sooner than the round trip, or on handshakes too short to time, stay flagged. An
    answer without TTLs and no sooner than the round trip is not flagged at all."""
    from tests.detectors.test_injection import Harness

    h = Harness()
    nets = ("203.0.113.7", "198.51.100.7")
    for k in range(40):
        for src in nets:
            h.run(event_id=f"c{k}{src}", src_ip=src, ts=f"2026-03-02T09:{k:02d}:00+09:00")
    odd = {"status": 502, "header_names": ["server", "content-type"], "server_header": "nginx",
           "ttl": ttl, "connect_ms": connect_ms, "ttfb_ms": ttfb_ms}
    first, _ = h.run(event_id="f1", src_ip=nets[0], ts="2026-03-02T10:15:00+09:00", **odd)
    second, ev = h.run(event_id="f2", src_ip=nets[1], ts="2026-03-02T10:15:20+09:00", **odd)
    assert (first is not None) == first_flagged
    assert (second is not None) == second_flagged
    assert ev.notes["injection"]["origin_wide"] == (not second_flagged)


def test_the_failover_boxs_answers_leave_the_origins_marks_for_other_statuses() -> None:
    """The fallback box answers 503 over TLS on six networks for twenty minutes, with its
    own ``server`` and headers. Afterwards a box on one path forges a 403 block page (its
    own headers, no ``server``, the SYN-ACK's TTL, on a handshake too short to time). No
    403 of the origin's was ever seen, so the 403 is read against the marks common to the
    origin's statuses: the box's 503s, had they taught the origin's marks for 503, would
    have left only those every web server sends (``server``, ``date``, ...), and the
    block page would miss too few of them to be flagged."""
    from tests.detectors.test_injection import BODY, Harness

    h = Harness()
    cdn = ["server", "date", "content-type", "content-length", "cf-ray", "cf-cache-status"]
    nets = [f"198.51.{k}.7" for k in range(6)]
    page = {"target": {"host": "www.example.com", "port": 80, "scheme": "http"},
            "request": "get", "status": 200, "header_names": cdn, "body_sha256": BODY}
    tls = {**page, "target": {"host": "www.example.com", "port": 443, "scheme": "https"}}
    for k in range(10):
        for n, src in enumerate(nets):
            for kind, ev in (("p", page), ("t", tls)):
                flag, _ = h.run(event_id=f"{kind}{k}-{n}", src_ip=src,
                                ts=f"2026-03-02T09:{k * 3:02d}:{n:02d}+09:00", **ev)
                assert flag is None
    box = {**tls, "status": 503, "server_header": "nginx", "body_sha256": None,
           "header_names": ["server", "date", "content-type", "content-length", "connection"]}
    for k in range(5):
        for n, src in enumerate(nets):
            h.run(event_id=f"f{k}-{n}", src_ip=src, ts=f"2026-03-02T10:{k * 4:02d}:{n:02d}+09:00",
                  **box)
    block = {**page, "status": 403, "server_header": None, "body_sha256": "ef" * 32,
             "header_names": ["content-type", "content-length", "cache-control"],
             "connect_ms": 1.0, "ttfb_ms": 0.3, "ttl": {"syn_ack": 55, "response": 55}}
    flag, ev = h.run(event_id="b1", src_ip="203.0.113.7", ts="2026-03-02T11:30:00+09:00",
                     **block)
    assert flag is not None, ev.notes["injection"]
    assert "cf-ray" in flag.evidence["origin_marks"]["missing"]
