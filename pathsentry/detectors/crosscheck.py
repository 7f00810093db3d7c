"""Cross-checks with what the game already knows: labels and interactions.

Owns :class:`CrossCheck`: a bounded store of the latest label per account
(``account_label`` events), a bounded one-hop interaction graph (``interaction``
events: recent edges only, a capped fan-out per account), the accounts an analyst
cleared per alert *handle* (the exit prefix or name template an alert names), and a
bounded index account → alert ids of the alerts it enriched, so that a label arriving
days later re-versions the alerts it confirms or refutes.

The engine passes every ``farm_group`` and ``vpn_relay`` alert through
:meth:`CrossCheck.enrich` at emission. The alert's evidence gains a ``crosscheck``
section and its score changes by these documented rules (weights in
``[detectors.crosscheck]``, defaults in :class:`CrossCheckSettings`):

1. *Confirmation* (noisy-or): every member labelled bad (``bot``, ``farm``,
   ``fraud``, ``takeover``) is independent evidence with weight ``label_weight``
   (0.25), every other member that traded, partied… with a bad-labelled account within
   ``window_s`` (7 days) of the alert, evidence with weight ``contact_weight`` (0.10):
   ``s' = 1 - (1 - s) (1 - label_weight)^labelled (1 - contact_weight)^traded``.
2. *Correction*: members an analyst ``cleared`` pull the score down in proportion:
   ``s' *= 1 - (1 - cleared_factor) * cleared / members`` (a cleared single-account
   relay alert keeps ``cleared_factor`` = 0.5 of its score).
3. *Handle correction*: once ``handle_cleared_min`` (3) distinct accounts were cleared
   on alerts naming the same exit prefix or name template, every later alert naming it
   keeps ``handle_factor`` (0.7) of its score.

The severity follows the new score. Every alert of every kind also passes through
:class:`FeedbackTally`, which counts per detector and alert kind the accounts flagged
and how many were later labelled bad or cleared: the online precision the
``detector_feedback`` view computes from ClickHouse, kept live for ``/metrics``.
Pure Python; no Kafka, no ClickHouse.

>>> from datetime import datetime, timezone
>>> from pathsentry.schemas import AccountLabel, Alert, Interaction
>>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
>>> cc = CrossCheck(CrossCheckSettings())
>>> cc.observe(AccountLabel(kind="account_label", event_id="l1", ts=t, account="m1",
...                         label="farm", source="ban"))
[]
>>> cc.observe(Interaction(kind="interaction", event_id="i1", ts=t, interaction="trade",
...                        account="m2", peer="m1"))
[]
>>> a = Alert(alert_id="g1", ts=t, kind="farm_group", severity="medium", score=0.6,
...           subject={"template": "m{1}"}, accounts=["m1", "m2", "m3"], evidence={},
...           detector="farm", first_seen=t, last_seen=t)
>>> b = cc.enrich(a)
>>> x = b.evidence["crosscheck"]
>>> x["labelled_members"], x["traded_with_labelled"], round(b.score, 3), b.severity
(1, 1, 0.73, 'medium')
"""

from __future__ import annotations

import sys
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mypy_extensions import mypyc_attr

from pathsentry.detectors.settings import load_settings
from pathsentry.schemas import BAD_LABELS, AccountLabel, Alert, Interaction, severity_for

__all__ = [
    "CROSSCHECKED_KINDS",
    "AlertIndex",
    "CrossCheck",
    "CrossCheckSettings",
    "FeedbackTally",
    "InteractionGraph",
    "LabelStore",
]

#: alert kinds the engine cross-checks
CROSSCHECKED_KINDS: frozenset[str] = frozenset({"farm_group", "vpn_relay"})


@dataclass(frozen=True, slots=True)
class CrossCheckSettings:
    """``[detectors.crosscheck]``; every field may be set there."""

    #: an interaction counts if it happened at most this long before the alert was raised
    window_s: float = 7 * 86400.0
    #: peers kept per account (the most recent); older ones are forgotten
    max_fanout: int = 64
    #: accounts kept in the interaction graph (least recently active dropped first)
    max_graph_accounts: int = 500_000
    #: accounts whose latest label is kept
    max_labels: int = 1_000_000
    #: noisy-or weight of one bad-labelled member
    label_weight: float = 0.25
    #: noisy-or weight of one member that dealt with a bad-labelled account
    contact_weight: float = 0.10
    #: share of its score a fully cleared alert keeps
    cleared_factor: float = 0.5
    #: distinct cleared accounts on alerts naming an exit / template before it is discounted
    handle_cleared_min: int = 3
    #: share of its score an alert naming a discounted exit / template keeps
    handle_factor: float = 0.7
    #: members of one alert looked up (larger groups: the first ones, the count says so)
    max_members: int = 1_000
    #: accounts listed by name in the evidence
    max_listed: int = 10
    #: alerts remembered for late labels
    max_alerts: int = 50_000
    #: alerts remembered per account
    alerts_per_account: int = 8
    #: exits / templates whose cleared accounts are counted
    max_handles: int = 20_000

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> CrossCheckSettings:
        (out,) = load_settings("crosscheck", settings, cls)
        return out  # type: ignore[no-any-return]


@mypyc_attr(native_class=False)  # compiled, a subclass of a dict type crashes the collector
class _Lru(OrderedDict[str, Any]):
    """An ordered dict that drops its least recently touched key beyond ``cap``."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = max(1, cap)

    def touch(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)


class LabelStore:
    """The latest label of each account (a newer ``ts`` wins; ties: the later arrival)."""

    def __init__(self, cap: int) -> None:
        self._by_account = _Lru(cap)

    def set(self, ev: AccountLabel) -> bool:
        """Keep ``ev`` if it is the account's newest; whether it was."""
        old: AccountLabel | None = self._by_account.get(ev.account)
        if old is not None and old.ts > ev.ts:
            return False
        self._by_account.touch(ev.account, ev)
        return True

    def get(self, account: str) -> AccountLabel | None:
        got: AccountLabel | None = self._by_account.get(account)
        return got

    def __len__(self) -> int:
        return len(self._by_account)


class InteractionGraph:
    """Recent edges between accounts, one hop, each account's fan-out capped.

    >>> g = InteractionGraph(max_fanout=2, max_accounts=10)
    >>> for i, peer in enumerate(["b", "c", "d"]):
    ...     g.add("a", peer, float(i), "trade")
    >>> sorted(p for p, _, _ in g.peers("a", since=0.0))  # "b" went: fan-out 2
    ['c', 'd']
    >>> [p for p, _, _ in g.peers("a", since=1.5)], [p for p, _, _ in g.peers("b", since=0.0)]
    (['d'], ['a'])
    """

    def __init__(self, max_fanout: int, max_accounts: int) -> None:
        self.max_fanout = max(1, max_fanout)
        self._adj = _Lru(max_accounts)

    def _link(self, a: str, b: str, ts: float, kind: str) -> None:
        peers: OrderedDict[str, tuple[float, str]] | None = self._adj.get(a)
        if peers is None:
            peers = OrderedDict()
        old = peers.get(b)
        if old is None or old[0] <= ts:
            peers[b] = (ts, kind)
            peers.move_to_end(b)
        while len(peers) > self.max_fanout:
            peers.popitem(last=False)
        self._adj.touch(a, peers)

    def add(self, a: str, b: str, ts: float, kind: str) -> None:
        if a != b:
            self._link(a, b, ts, kind)
            self._link(b, a, ts, kind)

    def peers(self, account: str, since: float) -> Iterator[tuple[str, float, str]]:
        """``(peer, ts, kind)`` of the account's edges at or after ``since``."""
        peers: OrderedDict[str, tuple[float, str]] | None = self._adj.get(account)
        for peer, (ts, kind) in (peers or {}).items():
            if ts >= since:
                yield peer, ts, kind

    def __len__(self) -> int:
        return len(self._adj)


class AlertIndex:
    """The alerts the cross-check enriched: the detector's own latest version of each
    (bounded), the version last emitted, and account → alert ids (bounded per account).

    An alert is kept as its compressed JSON, not as the model: its evidence is the
    larger part of it, and as Python objects one alert takes about 6 KiB where its
    compressed JSON takes a few hundred bytes. The JSON of the first alert of each kind
    is the preset dictionary its later alerts are compressed with (alerts of a kind
    share most of their keys and phrasing: about half the size of compressing each on
    its own). It is decoded again only when a late label or interaction re-versions
    it, which is rare next to emitting alerts.

    >>> from datetime import datetime, timezone
    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> a = Alert(alert_id="a1", ts=t, kind="vpn_relay", severity="high", score=0.9,
    ...           subject={"account": "x"}, accounts=["x"], event_ids=["e1"],
    ...           evidence={"gap": {"gap_ms": 31.5, "samples": [1, 2]}}, summary="s",
    ...           detector="latency", first_seen=t, last_seen=t, version=2)
    >>> index = AlertIndex(max_alerts=10, per_account=4)
    >>> index.remember(a, 3)
    >>> b = a.model_copy(update={"alert_id": "a2", "accounts": ["x", "y"], "score": 0.7})
    >>> index.remember(b, 1)
    >>> index.alerts_of("x") == [a, b], index.alerts_of("y") == [b], index.last_version("a1")
    (True, True, 3)
    """

    def __init__(self, max_alerts: int, per_account: int) -> None:
        #: alert id -> (compressed JSON, version last emitted, kind)
        self._alerts = _Lru(max_alerts)
        self._by_account = _Lru(max_alerts * 4)
        self.per_account = max(1, per_account)
        #: alert kind -> the preset dictionary its alerts are compressed with
        self._zdicts: dict[str, bytes] = {}

    def remember(self, base: Alert, emitted_version: int) -> None:
        raw = base.model_dump_json().encode()
        kind = sys.intern(base.kind)
        zdict = self._zdicts.get(kind)
        if zdict is None:
            zdict = self._zdicts[kind] = raw
        packer = zlib.compressobj(1, zdict=zdict)
        self._alerts.touch(base.alert_id, (packer.compress(raw) + packer.flush(),
                                           emitted_version, kind))
        for acc in base.accounts:
            ids = self._ids(acc)
            if base.alert_id not in ids:
                ids = (*ids, base.alert_id)[-self.per_account:]
            # one alert id (most accounts): the id itself, not a tuple of one
            self._by_account.touch(acc, ids[0] if len(ids) == 1 else ids)

    def _ids(self, account: str) -> tuple[str, ...]:
        """The ids of the alerts ``account`` is in, oldest first."""
        got = self._by_account.get(account)
        if got is None:
            return ()
        return (got,) if isinstance(got, str) else tuple(got)

    def last_version(self, alert_id: str) -> int:
        got = self._alerts.get(alert_id)
        return int(got[1]) if got is not None else 0

    def alerts_of(self, account: str) -> list[Alert]:
        out = []
        for aid in self._ids(account):
            got = self._alerts.get(aid)
            if got is not None:
                unpacker = zlib.decompressobj(zdict=self._zdicts[got[2]])
                out.append(Alert.model_validate_json(unpacker.decompress(got[0]) + unpacker.flush()))
        return out


class FeedbackTally:
    """Per ``detector/kind``: accounts its alerts named (``flagged_accounts``), and of
    those, how many have a latest label made at or after the account was first flagged
    that is bad (``labelled_bad``) or ``cleared``; the same rule as the
    ``detector_feedback`` view. Accounts are bounded (the least recently flagged go, and
    their counts with them).

    >>> from datetime import datetime, timezone
    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> labels = LabelStore(10)
    >>> tally = FeedbackTally(labels, cap=10)
    >>> tally.flagged("farm", "farm_group", ["a", "b"], 100.0)
    >>> _ = labels.set(AccountLabel(kind="account_label", event_id="l", ts=t, account="a",
    ...                             label="bot", source="ban"))
    >>> tally.relabelled("a")
    >>> tally.counts["farm/farm_group"]
    {'flagged_accounts': 2, 'labelled_bad': 1, 'cleared': 0}
    """

    def __init__(self, labels: LabelStore, cap: int) -> None:
        self.labels = labels
        #: account -> ("detector/kind", first flagged (epoch s), ...): one flat tuple per
        #: account (kept for every flagged account: a dict each would take about 180 bytes
        #: more), the keys interned; an account flagged only under :attr:`_solo` (the
        #: first key the tally met, the usual case) keeps the bare time instead, 56 bytes
        #: less again (:meth:`_keys`)
        self._first = _Lru(cap)
        self._solo = ""
        self.counts: dict[str, dict[str, int]] = {}

    def _keys(self, account: str) -> tuple[Any, ...]:
        """The account's flat ``(key, first flagged, ...)`` tuple (empty if unknown)."""
        return self._unpack(self._first.get(account))

    def _unpack(self, got: Any) -> tuple[Any, ...]:
        if got is None:
            return ()
        if isinstance(got, tuple):
            return got
        return (self._solo, got)

    def _pack(self, keys: tuple[Any, ...]) -> Any:
        return keys[1] if len(keys) == 2 and keys[0] == self._solo else keys

    def _status(self, account: str, since: float) -> str | None:
        lab = self.labels.get(account)
        if lab is None or lab.ts.timestamp() < since:
            return None
        return "labelled_bad" if lab.label in BAD_LABELS else "cleared"

    def _add(self, key: str, account: str, since: float, sign: int) -> None:
        c = self.counts.setdefault(key, {"flagged_accounts": 0, "labelled_bad": 0, "cleared": 0})
        c["flagged_accounts"] += sign
        st = self._status(account, since)
        if st is not None:
            c[st] += sign

    def flagged(self, detector: str, kind: str, accounts: Iterable[str], first_seen: float) -> None:
        key = sys.intern(f"{detector}/{kind}")
        if not self._solo:
            self._solo = key
        for acc in accounts:
            keys = self._keys(acc)
            try:
                i = keys.index(key, 0, len(keys) - 1)
            except ValueError:
                i = -1
            old: float | None = None if i < 0 else keys[i + 1]
            if old is None or first_seen < old:
                if old is not None:
                    self._add(key, acc, old, -1)
                    keys = (*keys[:i], key, first_seen, *keys[i + 2:])
                else:
                    keys = (*keys, key, first_seen)
                self._add(key, acc, first_seen, +1)
            if len(self._first) >= self._first.cap and acc not in self._first:
                gone, gone_keys = next(iter(self._first.items()))
                for k, since in _pairs(self._unpack(gone_keys)):
                    self._add(k, gone, since, -1)
            self._first.touch(acc, self._pack(keys))

    def relabelled(self, account: str, before: AccountLabel | None = None) -> None:
        """``account``'s latest label changed (``before``: its previous one)."""
        for key, since in _pairs(self._keys(account)):
            c = self.counts[key]
            if before is not None and before.ts.timestamp() >= since:
                c["labelled_bad" if before.label in BAD_LABELS else "cleared"] -= 1
            st = self._status(account, since)
            if st is not None:
                c[st] += 1


def _pairs(flat: tuple[Any, ...]) -> Iterator[tuple[str, float]]:
    """``(key, value)`` pairs of a flat ``(key, value, key, value, ...)`` tuple."""
    return zip(flat[::2], flat[1::2], strict=True)


def handles(alert: Alert) -> list[str]:
    """The exits and name template an alert names (what a run of cleared accounts
    discounts): ``template:<t>`` from a farm group's subject, ``exit:<prefix>`` from a
    relay alert's claimed prefix or a farm group's relayed exits.

    >>> from datetime import datetime, timezone
    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> handles(Alert(alert_id="a", ts=t, kind="farm_group", severity="low", score=0.1,
    ...               subject={"template": "bot{3}"}, detector="farm", first_seen=t, last_seen=t,
    ...               evidence={"relay": {"exits": [["203.0.113.0/24", 4]]}}))
    ['template:bot{3}', 'exit:203.0.113.0/24']
    """
    out: list[str] = []
    tpl = alert.subject.get("template")
    if isinstance(tpl, str) and tpl:
        out.append(f"template:{tpl}")
    ev = alert.evidence
    claimed = ev.get("claimed")
    if isinstance(claimed, dict) and isinstance(claimed.get("prefix"), str):
        out.append(f"exit:{claimed['prefix']}")
    relay = ev.get("relay")
    if isinstance(relay, dict):
        for row in relay.get("exits") or []:
            if isinstance(row, list | tuple) and row and isinstance(row[0], str):
                out.append(f"exit:{row[0]}")
    return out


class CrossCheck:
    """Labels, interactions, cleared handles and the alert index; see the module doc."""

    def __init__(self, settings: CrossCheckSettings) -> None:
        self.settings = settings
        self.labels = LabelStore(settings.max_labels)
        self.graph = InteractionGraph(settings.max_fanout, settings.max_graph_accounts)
        self.index = AlertIndex(settings.max_alerts, settings.alerts_per_account)
        self.tally = FeedbackTally(self.labels, settings.max_labels)
        #: handle -> distinct cleared accounts (at most ``handle_cleared_min`` kept)
        self._cleared_on = _Lru(settings.max_handles)

    # -- input ------------------------------------------------------------------

    def observe(self, ev: AccountLabel | Interaction) -> list[Alert]:
        """Take one label or interaction; the alerts a label re-versions (a label that
        is not the account's newest, and an interaction, re-version nothing)."""
        if isinstance(ev, Interaction):
            self.graph.add(ev.account, ev.peer, ev.ts.timestamp(), ev.interaction)
            return []
        before = self.labels.get(ev.account)
        if not self.labels.set(ev):
            return []
        self.tally.relabelled(ev.account, before)
        affected = self.index.alerts_of(ev.account)
        if ev.label == "cleared":
            for alert in affected:
                for h in handles(alert):
                    accs: list[str] = self._cleared_on.get(h) or []
                    if ev.account not in accs:
                        accs = [*accs, ev.account][: self.settings.handle_cleared_min]
                    self._cleared_on.touch(h, accs)
        return [self._emit(alert, ev.ts.timestamp()) for alert in affected]

    # -- alerts -----------------------------------------------------------------

    def enrich(self, alert: Alert) -> Alert:
        """``alert`` with its cross-check evidence and adjusted score (other kinds
        unchanged); remembered for late labels. Every alert is tallied."""
        self.tally.flagged(alert.detector, alert.kind, alert.accounts, alert.first_seen.timestamp())
        if alert.kind not in CROSSCHECKED_KINDS:
            return alert
        return self._emit(alert, None)

    def enrich_all(self, alerts: Iterable[Alert]) -> list[Alert]:
        return [self.enrich(a) for a in alerts]

    def _emit(self, base: Alert, relabelled_at: float | None) -> Alert:
        version = max(base.version, self.index.last_version(base.alert_id) + 1)
        out = self._assess(base, version, relabelled_at)
        self.index.remember(base, version)
        return out

    def _assess(self, base: Alert, version: int, relabelled_at: float | None) -> Alert:
        st = self.settings
        since = base.first_seen.timestamp() - st.window_s
        members = base.accounts[: st.max_members]
        member_set = set(members)
        labels: dict[str, int] = {}
        labelled: list[str] = []
        cleared: list[str] = []
        traded: list[str] = []
        contacts: dict[str, int] = {}
        peers_labelled: set[str] = set()
        for acc in members:
            lab = self.labels.get(acc)
            if lab is not None and lab.label in BAD_LABELS:
                labels[lab.label] = labels.get(lab.label, 0) + 1
                labelled.append(acc)
                continue
            if lab is not None and lab.label == "cleared":
                cleared.append(acc)
            hit = False
            for peer, _ts, kind in self.graph.peers(acc, since):
                plab = self.labels.get(peer)
                if plab is not None and plab.label in BAD_LABELS:
                    contacts[kind] = contacts.get(kind, 0) + 1
                    if peer not in member_set:
                        peers_labelled.add(peer)
                    hit = True
            if hit:
                traded.append(acc)
        s0 = base.score
        s = 1.0 - (1.0 - s0) * (1.0 - st.label_weight) ** len(labelled) \
            * (1.0 - st.contact_weight) ** len(traded)
        rules: list[str] = []
        if labelled or traded:
            rules.append(f"{len(labelled)} member(s) labelled bad (weight {st.label_weight}), "
                         f"{len(traded)} dealt with bad-labelled accounts (weight {st.contact_weight})")
        if cleared and members:
            s *= 1.0 - (1.0 - st.cleared_factor) * len(cleared) / len(members)
            rules.append(f"{len(cleared)} of {len(members)} member(s) cleared by an analyst")
        discounted = {h: len(a) for h in handles(base)
                      if len(a := self._cleared_on.get(h) or []) >= st.handle_cleared_min}
        if discounted:
            s *= st.handle_factor
            rules.append(f"{', '.join(sorted(discounted))}: {st.handle_cleared_min}+ accounts "
                         f"cleared on alerts naming it (keeps {st.handle_factor} of the score)")
        s = min(1.0, max(0.0, round(s, 4)))
        k = st.max_listed
        evidence = {
            "members": len(base.accounts),
            "checked_members": len(members),
            "labelled_members": len(labelled),
            "labels": labels,
            "labelled_accounts": labelled[:k],
            "cleared_members": len(cleared),
            "cleared_accounts": cleared[:k],
            "traded_with_labelled": len(traded),
            "traded_accounts": traded[:k],
            "contacts_by_kind": contacts,
            "labelled_peers_outside": sorted(peers_labelled)[:k],
            "window_s": st.window_s,
            "discounted_handles": discounted,
            "score": {"detector": s0, "final": s},
            "rules": rules,
        }
        if relabelled_at is not None:
            evidence["relabelled_at"] = relabelled_at
        summary = base.summary
        if labelled or traded or cleared:
            summary += (f" · cross-check: {len(labelled)} labelled, {len(traded)} dealt with "
                        f"labelled accounts, {len(cleared)} cleared")
        return base.model_copy(update={
            "score": s, "severity": severity_for(s), "version": version, "summary": summary,
            "evidence": {**base.evidence, "crosscheck": evidence},
        })
