"""Relay detection from latency physics (flag and alert kind ``vpn_relay``).

A VPN, proxy or relay with a home-country exit address hides where the client
is, but not how long its packets take. Per login (and the ``rtt_probe`` events
of the same session) the detector weighs five kinds of evidence:

``gap``
    Cross-layer gap. An L4 relay (SOCKS, Shadowsocks, a VPS forwarder)
    terminates TCP, so the server-side kernel ``tcp_rtt_ms`` only covers the
    server-relay leg while ``app_rtt_ms`` covers the whole path: ``tcp << app``.
    But a game answers its ping on its game loop (a fixed cost plus a uniform
    phase of its tick), so the gap is judged against each server's learned
    application overhead (:mod:`.baselines`), never against a constant. A server
    not warmed up is judged against the largest overhead its documented prior
    (``overhead_prior_cost_ms``, ``overhead_prior_tick_ms``) and its logins so far
    allow (:mod:`.prior`): a bound that holds whatever the overhead turns out to be.
    A login with one or two samples has no verdict before its access kind's spikes
    were learned from ``spike_warmup`` logins. An
    ICMP/TCP probe from the login server that is answered far faster than the
    application is the same signal one layer down (the VPN endpoint answers for the
    client); it is ignored for mobile access, where the carrier gateway answers pings.
``baseline``
    Online baselines of the session's minimum app RTT per (server, /24 or /48),
    falling back to (server, ASN) and (server, country, access kind): River
    running quantiles (P² estimator) and counts. A baseline with fewer than
    ``warmup_samples`` samples gives no verdict, and the evidence says so.
``physics``
    The claimed location (geolocation of ``src_ip``) and the server are a
    great-circle distance apart; light in fibre needs ``km / 100`` ms of RTT,
    routed paths about twice that, plus the access network's share. The
    measurement is a network RTT: the kernel TCP RTT, or the app minimum less the
    server's learned overhead, or the slowest app sample less the cost and one
    whole tick (an honest client's samples all land within one tick of its round
    trip, so a relay leg hidden in the fastest sample's phase shows in the
    slowest); never a raw app figure. The session's app probes from other
    vantages are judged the same way against each vantage's own learned overhead:
    an application round trip reaches the client whatever the relay, so a leg the
    login server's long tick hides shows on a vantage with a short tick or none,
    and a login proven relayed by a late probe marks its exit prefix (whose
    earlier sessions are re-assessed). A cold vantage's bounds narrow as its logins
    teach it, so each login it learns from judges again the app probes it answered
    for its latest sessions (:meth:`~.detector.LatencyDetector._rejudge_cold`); until
    its first login the spreads of the app probes it answers bound its tick, so a
    vantage that hosts no login is judged against the prior's cost and that bound. What it exceeds beyond
    that (and a per-access-kind tolerance) is the detour, expressed in ms and in
    km (100 km per ms of RTT).
``vantage``
    Constraint-based geolocation: the responder lies inside a disk of radius
    ``RTT x 100 km`` around every probing vantage. A claimed point outside a
    disk is violated; the disks' intersection is the rough feasible region.
``route`` / ``model``
    A foreign-origin route found by the route detector for the same session
    (its traceroute before the login, or after it: then the login is
    re-assessed with the route, so both orders give the same verdict), and a
    River :class:`~river.anomaly.HalfSpaceTrees` model over squashed residual
    features (gap, baseline z, physics excess, vantage violation).

The components are combined as a noisy-OR of weighted scores, then adjusted by
the account's bounded history: one noisy session on an otherwise clean account
is damped, repeated suspicious sessions raise the score. Allow-listed ranges
(config ``[[allow]]``) are never flagged; a suppressed flag keeps its reason in
``Enriched.notes["relay"]``. Baselines are only fed with unsuspicious,
non-allow-listed sessions, so relays do not teach the baseline that they are
normal.

Cost per event: a login is assessed once, numerically (local floats, no
evidence objects); evidence dicts and human-readable reasons are only put into
words for a flag. A probe updates its session in O(1) (the vantage violation is
monotone: a probe only adds a disk or shrinks its own) and re-assesses the login
only if some component could be non-zero -- a clean session's probe ends after
the comparisons each component needs (and a look at its baseline). The anomaly
model is only asked about logins with other evidence (it sharpens physical
evidence and never flags on its own), and about a probe's session only if a flag
is within reach with the model's full weight. The model scores on flattened trees
(memoised until its window pivots) and learns in queued, vectorised batches. A
login whose exit prefix carries evidence re-assesses the prefix's unflagged recent
sessions (at most ``prefix_history``); any login costs one pass over its prefix's
history. What a prefix's history gives (its logins' standardised gap residuals, its
proven accounts) is worked out once per history and kept while the overheads it was
taken against stay the same (:class:`~.prefixes.PrefixView`, for the last
``PREFIX_VIEWS_MAX`` = 4,096 prefixes asked, about 4 KiB each with 16 logins: at most
about 17 MiB), so a probe does not repeat the pass (nor, for the session last asked,
the sum over the other sessions' residuals); noise scales are kept until their
access kind's residuals change, and the overheads' votes are kept in order as they come.

Modules: :mod:`.state` (bounded tables, alert book, the session record),
:mod:`.defaults` (settings and component weights), :mod:`.prefix_baselines`
(prefix baselines), :mod:`.baselines` (learned server overheads), :mod:`.votes` (their
votes and phase arithmetic), :mod:`.noise` (an access kind's
gaps, judged for noise against the costs as they are now), :mod:`.prior` (a
cold server's overhead bounds), :mod:`.geometry`
(distances, expectations, RTT disks), :mod:`.model` (the anomaly model),
:mod:`.scoring` (component strengths, combination), :mod:`.history` (account
histories), :mod:`.prefixes` (what
an exit prefix's recent logins show together), :mod:`.evidence`
(flags put into words), :mod:`.snapshots` (state as JSON and back) and
:mod:`.detector` (events, learning).

Memory is bounded (least-recently-used keys are evicted): ``baseline_keys_max``
baselines (three P² quantile sketches and a count), ``sessions_max`` sessions,
``accounts_max`` account histories (``history_len`` scores), ``overhead_window`` gaps
and tick estimates per server (and platform) and twice that per access kind,
``prefixes_max`` exit-prefix histories (``prefix_history`` logins of seven fields
each, 16 by default: at most about 2.5 KiB with their own session-id strings, so at
most about 50 MiB at the default 20,000 prefixes; most prefixes hold a few logins), ``alerts_max`` alert
records (at most ``MAX_ALERT_EVENTS`` event ids); ``distances_max`` memoised
distances and expectations per claimed location (cleared when full). A session
is one flat object: the login's identifiers, its RTT figures (minimum, 10th
percentile, sample count, TCP RTT), references to its geolocation, prefix and
route (shared with enrichment and the route detector), its baseline keys (the
baselines' own strings) and its probes (at most ``MAX_VANTAGES``, four fields
each); the parsed event, its enrichment and notes are not kept. Sizes of the
Python objects with their keys (``sys.getsizeof``, shared objects counted once):
a session with one probe about 0.85 KiB (1 KiB if it holds the only reference to
its geolocation), an account about 0.2 KiB, a baseline about 0.75 KiB. Measured with every table full at the
defaults (250k distinct keys driven like ``tests/hostile/test_bounded_state.py``,
each its own session, account, /24 and ASN, one probe per session): about +310
MiB of RSS for this detector, flat once the caps are reached (it was +820 MiB
with the parsed login kept per session). Lower ``sessions_max`` and
``baseline_keys_max`` in ``[detectors.latency]`` for a smaller footprint. The
anomaly model is a fixed size. :meth:`LatencyDetector.state` is a JSON snapshot
of all of it, so baselines survive a worker restart.

Example: a KR client behind a Seoul L4 relay (TCP terminates 2 ms away, the
game answers in 62 ms) on a server whose overhead was learned from 40 honest
logins (a 6 ms cost and a 20 ms tick):

>>> import random
>>> from pathsentry.config import load_config
>>> from pathsentry.detectors.base import DetectorContext, Enriched
>>> from pathsentry.enrich.geo import GeoInfo, GeoResolver
>>> from pathsentry.schemas import parse_event
>>> cfg = load_config(text='[[server]]\\nid = "kr-sel-1"\\nlat = 37.57\\nlon = 126.98\\n'
...                        'country = "KR"\\n', env={})
>>> det = LatencyDetector(DetectorContext(cfg, GeoResolver([])))
>>> home = GeoInfo(country="KR", asn=4766, lat=37.5, lon=127.0, kind="residential",
...                precision="city")
>>> rng = random.Random(1)
>>> def login(i, app, tcp, geo, ip):
...     ev = Enriched(parse_event({"kind": "login", "event_id": f"l{i}",
...         "ts": "2026-01-01T00:00:00Z", "src_ip": ip, "session_id": f"s{i}",
...         "account": f"a{i}", "server_id": "kr-sel-1", "app_rtt_ms": app,
...         "tcp_rtt_ms": tcp}), geo, ip.rsplit(".", 1)[0] + ".0/24",
...         server=cfg.server("kr-sel-1"))
...     return ev, det.process(ev)
>>> for i in range(40):
...     rtt = rng.uniform(3.0, 6.0)
...     _ = login(i, [rtt + 6.0 + rng.uniform(0, 20) for _ in range(4)], rtt, home,
...               f"211.234.{i}.7")
>>> vps = GeoInfo(country="KR", asn=64500, lat=37.5, lon=127.0, kind="hosting",
...               precision="city")
>>> ev, out = login(99, [62.0, 64.5, 63.1], 2.1, vps, "203.0.113.7")
>>> [f.kind for f in out.flags], ev.notes["relay"]["flagged"], round(ev.notes["relay"]["gap_ms"])
(['vpn_relay'], True, 60)
>>> gap = out.flags[0].evidence["gap"]
>>> 4 < gap["overhead"]["cost_ms"] < 8, 15 < gap["overhead"]["tick_ms"] < 26, gap["verdict"]
(True, True, 'relay')
"""

from pathsentry.detectors.latency.baselines import Baseline, Overhead, OverheadBook
from pathsentry.detectors.latency.detector import LatencyDetector
from pathsentry.detectors.latency.geometry import feasible_region
from pathsentry.detectors.latency.model import QueuedHalfSpaceTrees
from pathsentry.detectors.latency.state import MAX_ALERT_EVENTS, MAX_VANTAGES, AlertBook, BoundedLRU

__all__ = [
    "MAX_ALERT_EVENTS",
    "MAX_VANTAGES",
    "AlertBook",
    "Baseline",
    "BoundedLRU",
    "LatencyDetector",
    "Overhead",
    "OverheadBook",
    "QueuedHalfSpaceTrees",
    "feasible_region",
]
