"""Settings of the path-injection detector (:mod:`pathsentry.detectors.injection`):
the evidence weights and thresholds of ``[detectors.injection]``, each documented
beside its default. The same table also holds the learned tables' settings, owned by
their modules (:class:`~.injection_profile.ProfileSettings`,
:class:`~.injection_window.WindowSettings`,
:class:`~.injection_handshake.HandshakeSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["InjectionSettings"]


@dataclass(frozen=True, slots=True)
class InjectionSettings:
    """Weights and thresholds (``[detectors.injection]`` in ``pathsentry.toml``; the
    same table also holds :class:`ProfileSettings` and :class:`WindowSettings`)."""

    #: score (noisy-OR of the evidence weights, 0-1) from which a probe is flagged
    flag_score: float = 0.6
    #: path score from which content evidence (status, body) joins the score
    path_gate: float = 0.5
    # -- path marks: each strong one flags on its own
    #: weight of an answer TTL that differs from the SYN-ACK's as the origin's never do
    w_ttl_delta: float = 0.6
    #: a TTL delta while the origin's TTL relation is not learned yet (prior: 0)
    w_ttl_unlearned: float = 0.45
    #: a TTL delta below the origin's usual ones (a route change, another stack)
    w_ttl_other: float = 0.25
    #: weight of the origin's learned marks (header set, server value) missing
    w_origin_marks: float = 0.6
    #: share of the origin's marks missing for the full weight (less: in proportion)
    marks_full_share: float = 0.5
    #: the same for a status the origin was not learned with: its marks are then those
    #: of other statuses, some of which belong to those statuses (``upgrade`` to a 101)
    marks_full_share_other: float = 0.75
    #: weight of a sequence race (overlapping segments with different bytes)
    w_seq_conflict: float = 0.6
    #: weight of a first byte sooner than a round trip to the server allows
    w_fast_answer: float = 0.4
    #: weight of the server retransmitting again and again (its answer was lost to a forged
    #: one)
    w_retransmits: float = 0.25
    # -- content evidence: joins path marks, never flags alone
    #: weight of a WebSocket upgrade not answered 101 (content: joins path marks only)
    w_ws_status: float = 0.4
    #: weight of a status other than the origin's (content: joins path marks only)
    w_status: float = 0.3
    #: weight of a body other than the origin's (content: joins path marks only)
    w_body: float = 0.3
    #: TTFB below ``fast_ratio * connect_ms`` (and below the origin's learned lowest
    #: ratio) is faster than the server can answer.
    fast_ratio: float = 0.6
    #: Below this handshake RTT, timing jitter dominates and TTFB says nothing.
    min_connect_ms: float = 2.0
    #: This many retransmitted segments in one probe is a storm.
    retransmit_storm: int = 4
    #: whether an answer without TTLs whose first byte came no sooner than the round trip
    #: (no race, no storm) is flagged on the origin's missing marks and its content
    #: alone: nothing places the box that answered nearer than the server
    flag_unplaced: bool = False
    #: whether a suspect answer whose TTL is below its SYN-ACK's and below the origin's
    #: relation, both sent with the same initial TTL (64, 128, 255: the hop counts
    #: differ, not the IP stacks), with no race, storm or first byte sooner than the
    #: round trip, is flagged: the box that answered is farther than the one that
    #: completed the handshake
    flag_answer_farther: bool = False
