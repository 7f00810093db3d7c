"""Settings of the relay detector and the fixed weights of its evidence.

Owns ``DEFAULTS`` (``[detectors.latency]`` in ``pathsentry.toml``: every key documented
by the ``#:`` comment above it, which ``pathsentry settings`` shows), the noisy-OR
weight of each evidence component (``WEIGHTS``), how much a baseline verdict weighs by
how specific its baseline is (``LEVEL_WEIGHT``) and the least spread a baseline
z-score is measured against (``MIN_SPREAD_MS``). What the defaults mean for the
verdicts is told in :mod:`.scoring`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "DEFAULT_MIN_SPREAD_MS", "LEVEL_WEIGHT", "MIN_SPREAD_MS", "WEIGHTS"]

#: Smallest baseline spread (p90 - p10, ms) a z-score is measured against: a
#: radio link can spike every sample of a short session (LTE: 15-60 ms), a
#: wired line cannot.
MIN_SPREAD_MS: dict[str, float] = {"mobile": 8.0}
DEFAULT_MIN_SPREAD_MS = 2.0
#: How much a baseline verdict weighs by how specific the baseline is.
#: A fallback baseline (ASN, country) alone stays below the flag threshold: a new
#: rural DSL prefix is slower than its ISP's city prefixes without any relay.
LEVEL_WEIGHT: dict[str, float] = {"prefix": 1.0, "asn": 0.6, "country": 0.5}
#: Noisy-OR weight of each evidence component.
WEIGHTS: dict[str, float] = {
    "gap": 0.95,
    "prefix_gap": 0.9,
    "prefix_relays": 0.8,
    "vantage": 0.85,
    "baseline": 0.85,
    "physics": 0.7,
    "route": 0.5,
    "model": 0.25,
}

DEFAULTS: dict[str, Any] = {
    #: samples an app-RTT baseline (per server and /24, ASN or country and access kind) needs
    #: before it gives a verdict
    "warmup_samples": 20,
    #: session score (noisy-OR of the components, 0-1) from which a login is flagged
    "flag_threshold": 0.6,
    #: account score from which a vpn_relay alert is raised
    "alert_threshold": 0.85,
    #: flagged sessions of one account that raise an alert whatever their score
    "alert_repeat": 2,
    #: recent session scores kept per account (they boost or damp its next score)
    "history_len": 8,
    #: app-RTT baselines kept (least recently used dropped)
    "baseline_keys_max": 100_000,
    #: sessions kept (least recently used dropped)
    "sessions_max": 100_000,
    #: account histories kept (least recently used dropped)
    "accounts_max": 200_000,
    #: alert records kept (least recently used dropped)
    "alerts_max": 50_000,
    #: memoised distances and expectations per claimed location (cleared when full)
    "distances_max": 100_000,
    #: a gap excess below this many ms (about 500 km of fibre) is never a relay leg
    "gap_min_ms": 5.0,
    #: gap excess (ms) at which the gap component is at full strength
    "gap_full_ms": 15.0,
    #: noise scales above the learned honest bound a gap must clear
    "gap_z": 3.0,
    #: tail probability of the tick's phase a gap must exceed (the bound's quantile is 1 -
    #: gap_alpha)
    "gap_alpha": 0.001,
    #: while fewer than 16 wired logins' app sample spreads are in, a server with a loop holds
    #: honest logins to at least the largest tick the spreads narrower than it do not rule out
    #: at this level (0.5: where they look typical), and the widest spread: the median of a few
    #: two-sample spreads stands short
    "tick_alpha": 0.5,
    #: the 1 - phase_alpha quantile of the phase is subtracted where an app figure meets physics
    "phase_alpha": 0.01,
    #: exit prefixes per server whose latest gaps vote on its learned cost, tick and noise (twice
    #: that per access kind)
    "overhead_window": 40,
    #: distinct exit prefixes a server needs before its learned overhead is used (until then the
    #: prior bounds)
    "overhead_warmup": 8,
    #: learn a server's overhead per client platform as well (when logins name it)
    "overhead_by_platform": True,
    #: the most a cold server's fixed application cost may be (ms): a slower server must raise it
    "overhead_prior_cost_ms": 30.0,
    #: the most a cold server's game-loop tick may be (ms): a slower server must raise it
    "overhead_prior_tick_ms": 200.0,
    #: logins of an access kind before a login with one or two app samples of that kind has a gap
    #: verdict of its own
    "spike_warmup": 40,
    #: recent logins kept per exit prefix, combined into its z-score
    "prefix_history": 16,
    #: exit-prefix histories kept (least recently used dropped)
    "prefixes_max": 20_000,
    #: logins with a gap verdict an exit prefix needs before its combined z-score counts
    "prefix_min_logins": 4,
    #: combined z-scores between which the exit prefix's evidence ramps from none to full
    "prefix_z": [4.5, 6.5],
    #: evidence (gap, physics or vantage, 0-1) from which a login proves its exit prefix relays
    "proven_min": 0.5,
    #: shares of an exit prefix's recent logins proven relayed between which its lent evidence ramps
    "prefix_share": [0.2, 0.5],
    #: distinct accounts proven relayed before an exit prefix lends evidence to its other logins
    "prefix_proven_accounts": 2,
    #: session score from which an account's earlier session counts as suspicious
    "suspicious_history": 0.55,
    #: trees of the half-space-trees anomaly model (river)
    "hst_trees": 10,
    #: height of each tree
    "hst_height": 6,
    #: logins per reference window of the model
    "hst_window": 250,
    #: the model's random seed (its trees are a function of it: saved state stays valid)
    "seed": 7,
}

