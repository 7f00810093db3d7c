"""Account takeover (flag and alert kind ``account_takeover``): a login that breaks
the account's own history (계정 도용).

Owns :class:`TakeoverDetector` and the bounded per-account history it keeps: devices
(``client.device_id``), local-address subnets (``client.local_ip`` /24, or /64), OS,
countries, ASNs, and the last login's place and time; and, per device, the accounts
seen on it. A successful login of an account with at least ``min_history`` logins is
flagged when it breaks that history in one of these ways:

- ``new_device_new_country``: a device the account never used, from a country it never
  logged in from;
- ``new_device_relay``: a device the account never used, through a connection the
  relay detector flagged (``notes["relay"]["flagged"]``, when it runs before) from a
  public prefix the account never used (a relay verdict on the account's own line is
  the relay detector's doubt, not a stranger's exit);
- ``shared_device``: a device the account never used that is already used by more
  accounts than the learned ``device_quantile`` (0.999) of accounts per device, and at
  least ``min_device_accounts`` (5): one machine logging into many accounts;
- ``impossible_travel``: from the last login's place to this one faster than
  ``max_speed_kmh`` (1000 km/h, an airliner) over more than ``geo_slack_km`` (500 km,
  the error of a city-level address location), on another device than the last login.

What each break weighs is combined by noisy-or (new ASN, subnet and OS add small
supporting weights); the evidence lists the history it broke. Hard negatives by
construction: a new phone in the usual country (no break), travelling abroad with the
usual device (a known device breaks nothing but ``impossible_travel`` needs another
device), a family sharing a PC (a few accounts per device, under the learned quantile).

A flagged login is not learned into the account's history (a takeover's next logins
stay new); an unflagged one is. Every login counts towards its device's accounts, and
the count is left to later detectors as ``notes["device"]`` (a connection-pattern
signal for farms).

>>> from datetime import datetime, timedelta, timezone
>>> from pathsentry.config import load_config
>>> from pathsentry.enrich.geo import GeoInfo, GeoResolver
>>> from pathsentry.schemas import Login
>>> det = TakeoverDetector(DetectorContext(load_config(text="", env={}), GeoResolver([])))
>>> t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
>>> def login(i, device, country, asn, lat, lon):
...     ev = Enriched(Login(kind="login", event_id=f"e{i}", ts=t0 + timedelta(days=i),
...                         src_ip="1.2.3.4", account="hero", server_id="kr-1", app_rtt_ms=[5.0],
...                         client={"device_id": device, "os": "android"}),
...                   GeoInfo(country=country, asn=asn, lat=lat, lon=lon), "1.2.3.0/24")
...     return det.process(ev)
>>> [bool(login(i, "phone-1", "KR", 4766, 37.5, 127.0)) for i in range(3)]
[False, False, False]
>>> bool(login(3, "phone-2", "KR", 4766, 37.5, 127.0))  # a new phone at home
False
>>> bool(login(4, "phone-1", "JP", 2516, 35.7, 139.7))  # travelling with the usual phone
False
>>> out = login(5, "pc-9", "BR", 28573, -23.5, -46.6)
>>> out.flags[0].evidence["breaks"], out.alerts[0].kind
(['new_device_new_country'], 'account_takeover')
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pathsentry.detectors import register
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.detectors.physics import great_circle_km
from pathsentry.detectors.settings import load_settings
from pathsentry.detectors.takeover_saved import check_takeover_state
from pathsentry.enrich.geo import network_text
from pathsentry.schemas import Alert, FlaggedEvent, Login, make_alert_id, severity_for

__all__ = ["TakeoverDetector", "TakeoverSettings"]

#: what one break weighs in the noisy-or
BREAK_WEIGHTS: dict[str, float] = {
    "new_device_new_country": 0.8,
    "new_device_relay": 0.7,
    "shared_device": 0.7,
    "impossible_travel": 0.8,
}
#: supporting evidence (not a break on its own)
SUPPORT_WEIGHTS: dict[str, float] = {"new_asn": 0.15, "new_local_subnet": 0.1, "new_os": 0.1}


@dataclass(frozen=True, slots=True)
class TakeoverSettings:
    """``[detectors.takeover]``; every field may be set there."""

    #: logins an account needs before a break of its history is flagged
    min_history: int = 3
    #: values remembered per account and attribute (the most recent)
    max_values: int = 8
    #: account histories kept (least recently used dropped)
    max_accounts: int = 200_000
    #: device histories kept (least recently used dropped)
    max_devices: int = 200_000
    #: accounts remembered per device (at least ``min_device_accounts`` + 1)
    max_accounts_per_device: int = 64
    #: quantile of the learned accounts-per-device distribution above which a device is shared
    device_quantile: float = 0.999
    #: floor of the shared-device threshold (a family shares a PC)
    min_device_accounts: int = 5
    #: fastest plausible travel (km/h, an airliner)
    max_speed_kmh: float = 1000.0
    #: location error (km) below which no jump counts
    geo_slack_km: float = 500.0
    #: alert records kept (least recently used dropped)
    alerts_max: int = 50_000

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TakeoverSettings:
        (out,) = load_settings("takeover", settings, cls)
        return out  # type: ignore[no-any-return]


def _values(seen: tuple[Any, ...]) -> tuple[Any, ...]:
    """The values of a history map, oldest first (see :class:`_History`)."""
    return seen[: len(seen) >> 1]


def _remember(seen: tuple[Any, ...], value: Any, ts: float, cap: int) -> tuple[Any, ...]:
    """``seen`` with ``value`` put last at time ``ts`` and the oldest beyond ``cap``
    forgotten: the order and eviction of an insertion-ordered dict whose key is moved to
    the end when it is set again."""
    n = len(seen) >> 1
    if n == 1 and seen[0] == value:  # the usual case: the same value again
        return (seen[0], ts)
    values, times = seen[:n], seen[n:]
    if value in values:
        i = values.index(value)
        values, times = values[:i] + values[i + 1:], times[:i] + times[i + 1:]
    values, times = (*values, value), (*times, ts)
    if len(values) > cap:
        values, times = values[-cap:], times[-cap:]
    return values + times


def _subnet(ip: IPv4Address | IPv6Address | None) -> str | None:
    if ip is None:
        return None
    return network_text(ip, 24 if ip.version == 4 else 64)


#: the history's per-kind maps, by attribute name (a module constant: the compiled
#: dataclass would take a class attribute for a field)
_HISTORY_MAPS = ("devices", "subnets", "oses", "countries", "asns", "prefixes")


@dataclass(slots=True)
class _History:
    """One account's history. Each map (devices, subnets, OSes, countries, ASNs,
    prefixes) is one flat tuple ``(value, ..., value, ts, ..., ts)``: the values oldest
    first, then the time each was last seen. A history is kept per account, so its maps
    are most of the detector's memory: an empty map is the shared empty tuple and a map
    of one value a tuple of two (a dict would take 64 and about 180 bytes)."""

    logins: int = 0
    devices: tuple[Any, ...] = ()
    subnets: tuple[Any, ...] = ()
    oses: tuple[Any, ...] = ()
    countries: tuple[Any, ...] = ()
    asns: tuple[Any, ...] = ()
    prefixes: tuple[Any, ...] = ()
    last_ts: float | None = None
    last_lat: float | None = None
    last_lon: float | None = None
    last_country: str | None = None
    last_device: str | None = None

    def row(self) -> dict[str, Any]:
        """A JSON snapshot (``summary`` is for people, this is for restarts)."""
        out: dict[str, Any] = {"logins": self.logins}
        for m in _HISTORY_MAPS:
            seen = getattr(self, m)
            n = len(seen) >> 1
            out[m] = list(zip(seen[:n], seen[n:], strict=True))
        out["last"] = [self.last_ts, self.last_lat, self.last_lon, self.last_country,
                       self.last_device]
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> _History:
        h = cls(logins=int(row.get("logins", 0)))
        for m in _HISTORY_MAPS:
            got = {k: float(t) for k, t in row.get(m, [])}  # (a repeated value: its last time)
            setattr(h, m, (*got, *got.values()))
        h.last_ts, h.last_lat, h.last_lon, h.last_country, h.last_device = row.get("last", [None] * 5)
        return h

    def summary(self) -> dict[str, Any]:
        return {
            "logins": self.logins,
            "devices": list(_values(self.devices)), "local_subnets": list(_values(self.subnets)),
            "oses": list(_values(self.oses)), "countries": list(_values(self.countries)),
            "asns": list(_values(self.asns)), "prefixes": list(_values(self.prefixes)),
            "last_login": {
                "ts": None if self.last_ts is None
                else datetime.fromtimestamp(self.last_ts, UTC).isoformat(),
                "country": self.last_country, "device": self.last_device,
                "lat": self.last_lat, "lon": self.last_lon,
            },
        }


class _DeviceAccounts:
    """Accounts seen per device (bounded) and the histogram of accounts per device, from
    which the shared-device threshold is read as a quantile."""

    def __init__(self, max_devices: int, per_device: int) -> None:
        #: device -> its accounts, oldest first (an insertion-ordered plain dict per device)
        self._devices: OrderedDict[str, dict[str, None]] = OrderedDict()
        self.max_devices = max(1, max_devices)
        self.per_device = max(2, per_device)
        #: hist[n] = devices with n accounts (n <= per_device)
        self.hist = [0] * (self.per_device + 1)

    def items(self) -> Iterator[tuple[str, dict[str, None]]]:
        return iter(self._devices.items())

    def count(self, device: str) -> int:
        accs = self._devices.get(device)
        return len(accs) if accs else 0

    def add(self, device: str, account: str) -> None:
        accs = self._devices.get(device)
        if accs is None:
            accs = self._devices[device] = {}
        before = len(accs)
        accs.pop(account, None)
        accs[account] = None
        while len(accs) > self.per_device:
            del accs[next(iter(accs))]
        self._devices.move_to_end(device)
        if len(accs) != before:
            if before:
                self.hist[before] -= 1
            self.hist[len(accs)] += 1
        while len(self._devices) > self.max_devices:
            _, gone = self._devices.popitem(last=False)
            self.hist[len(gone)] -= 1

    def quantile(self, q: float, leave_out: int = 0) -> int:
        """The ``q`` quantile of accounts per device over the devices remembered (0: none),
        one device with ``leave_out`` accounts left out (the device being judged)."""
        # every device remembered is in ``hist`` once: ``len(self._devices) == sum(self.hist)``
        total = len(self._devices) - (1 if leave_out else 0)
        if total <= 0:
            return 0
        need, seen = q * total, 0
        for n, c in enumerate(self.hist):
            seen += c - (1 if leave_out and n == leave_out else 0)
            if seen >= need:
                return n
        return len(self.hist) - 1


class TakeoverDetector(Detector):
    """Logins that break their account's own device and place history."""

    name = "takeover"
    consumes = frozenset({"login"})
    after = ("latency",)  # reads its relay verdict

    def __init__(self, ctx: DetectorContext) -> None:
        super().__init__(ctx)
        self.settings = TakeoverSettings.from_settings(ctx.settings(self.name))
        self._accounts: OrderedDict[str, _History] = OrderedDict()
        self._devices = _DeviceAccounts(self.settings.max_devices, self.settings.max_accounts_per_device)
        #: alert id -> (first seen, version, event ids)
        self._alerts: OrderedDict[str, tuple[float, int, list[str]]] = OrderedDict()

    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        login = ev.event
        if not isinstance(login, Login) or login.outcome != "success":
            return None
        st = self.settings
        client = login.client
        device = client.device_id if client is not None else None
        subnet = _subnet(client.local_ip if client is not None else None)
        os_name = client.os if client is not None else None
        _geo, ts = ev.geo, ev.ts
        hist = self._accounts.get(login.account)
        if hist is None:
            hist = self._accounts[login.account] = _History()
        self._accounts.move_to_end(login.account)
        while len(self._accounts) > st.max_accounts:
            self._accounts.popitem(last=False)
        device_accounts = self._devices.count(device) if device else 0
        expected = self._devices.quantile(st.device_quantile, device_accounts)
        threshold = max(st.min_device_accounts, expected + 1)
        if device:
            ev.notes["device"] = {"accounts": device_accounts, "shared_threshold": threshold}
        found = None
        if hist.logins >= st.min_history and hist.devices:
            found = self._check(ev, login, hist, device, subnet, os_name, device_accounts,
                                expected, threshold)
        if device:  # the device's accounts count every login, flagged or not
            self._devices.add(device, login.account)
        if found is None:
            self._learn(hist, device, subnet, os_name, ev, ts)
        return found

    # -- snapshots: the account histories and the devices' accounts ---------------

    def state(self) -> dict[str, Any]:
        return {"version": 1,
                "accounts": [[a, h.row()] for a, h in self._accounts.items()],
                "devices": [[d, list(accs)] for d, accs in self._devices.items()]}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            return
        check_takeover_state(state)  # (before anything is cleared)
        self._accounts.clear()
        self._devices = _DeviceAccounts(self.settings.max_devices,
                                        self.settings.max_accounts_per_device)
        self.load_learned(state)

    def learned_state(self) -> dict[str, Any]:
        """Account histories are what this detector learns from the traffic: a worker
        starting cold takes another's."""
        return self.state()

    def load_learned(self, state: dict[str, Any]) -> None:
        """The histories and devices this detector does not know yet (its own stay);
        refused whole unless every field is as a save writes it."""
        if state.get("version") != 1:
            return
        check_takeover_state(state)
        for account, row in state.get("accounts", []):
            if account not in self._accounts and len(self._accounts) < self.settings.max_accounts:
                self._accounts[account] = _History.from_row(row)
        for device, accounts in state.get("devices", []):
            if not self._devices.count(device):
                for acc in accounts:
                    self._devices.add(device, acc)

    def _learn(self, hist: _History, device: str | None, subnet: str | None,
               os_name: str | None, ev: Enriched, ts: float) -> None:
        cap, geo = self.settings.max_values, ev.geo
        hist.logins += 1
        if device:
            hist.devices = _remember(hist.devices, device, ts, cap)
        if subnet:
            hist.subnets = _remember(hist.subnets, subnet, ts, cap)
        if os_name:
            hist.oses = _remember(hist.oses, os_name, ts, cap)
        if geo.country:
            hist.countries = _remember(hist.countries, geo.country, ts, cap)
        if geo.asn is not None:
            hist.asns = _remember(hist.asns, geo.asn, ts, cap)
        hist.prefixes = _remember(hist.prefixes, ev.prefix, ts, cap)
        hist.last_ts, hist.last_country, hist.last_device = ts, geo.country, device
        if geo.located:
            hist.last_lat, hist.last_lon = geo.lat, geo.lon

    def _travel(self, hist: _History, ev: Enriched, device: str | None) -> dict[str, Any] | None:
        """The jump from the last login, when both places are located (else ``None``)."""
        geo = ev.geo
        if hist.last_ts is None or hist.last_lat is None or hist.last_lon is None \
                or geo.lat is None or geo.lon is None:
            return None
        km = great_circle_km(hist.last_lat, hist.last_lon, geo.lat, geo.lon)
        hours = max(ev.ts - hist.last_ts, 1.0) / 3600.0
        speed = km / hours
        st = self.settings
        return {"km": round(km), "hours": round(hours, 2), "speed_kmh": round(speed),
                "max_speed_kmh": st.max_speed_kmh, "geo_slack_km": st.geo_slack_km,
                "same_device_as_last": device is not None and device == hist.last_device,
                "impossible": km > st.geo_slack_km and speed > st.max_speed_kmh}

    def _check(self, ev: Enriched, login: Login, hist: _History, device: str | None,
               subnet: str | None, os_name: str | None, device_accounts: int, expected: int,
               threshold: int) -> Findings | None:
        geo = ev.geo
        new_device = device is not None and device not in _values(hist.devices)
        new_country = geo.country is not None and bool(hist.countries) \
            and geo.country not in _values(hist.countries)
        relay = ev.notes.get("relay")
        relayed = isinstance(relay, dict) and bool(relay.get("flagged"))
        travel = self._travel(hist, ev, device)
        breaks: list[str] = []
        if new_device and new_country:
            breaks.append("new_device_new_country")
        if new_device and relayed and ev.prefix not in _values(hist.prefixes):
            breaks.append("new_device_relay")
        if new_device and device_accounts >= threshold:
            breaks.append("shared_device")
        if travel is not None and travel["impossible"] and not travel["same_device_as_last"]:
            breaks.append("impossible_travel")
        if not breaks:
            return None
        support = []
        if geo.asn is not None and hist.asns and geo.asn not in _values(hist.asns):
            support.append("new_asn")
        if subnet is not None and hist.subnets and subnet not in _values(hist.subnets):
            support.append("new_local_subnet")
        if os_name is not None and hist.oses and os_name not in _values(hist.oses):
            support.append("new_os")
        keep = 1.0
        for b in breaks:
            keep *= 1.0 - BREAK_WEIGHTS[b]
        for s in support:
            keep *= 1.0 - SUPPORT_WEIGHTS[s]
        score = round(1.0 - keep, 4)
        evidence: dict[str, Any] = {
            "breaks": breaks,
            "supporting": support,
            "login": {"device": device, "local_subnet": subnet, "os": os_name,
                      "country": geo.country, "asn": geo.asn, "lat": geo.lat, "lon": geo.lon,
                      "prefix": ev.prefix},
            "history": hist.summary(),
            "device_accounts": {"accounts": device_accounts, "expected_quantile": expected,
                                "quantile": self.settings.device_quantile,
                                "threshold": threshold},
        }
        if travel is not None:
            evidence["travel"] = travel
        if relayed:
            evidence["relay"] = relay
        reasons = [self._reason(b, evidence) for b in breaks]
        alert = self._alert(login, score, evidence, reasons)
        flag = FlaggedEvent(
            event_id=login.event_id, ts=login.ts, kind="account_takeover", account=login.account,
            session_id=login.session_id, src_ip=str(login.src_ip), country=geo.country,
            asn=geo.asn, score=score, reasons=reasons, evidence=evidence,
            alert_id=alert.alert_id, detector=self.name,
        )
        return Findings(flags=[flag], alerts=[alert])

    @staticmethod
    def _reason(brk: str, ev: dict[str, Any]) -> str:
        login, hist = ev["login"], ev["history"]
        if brk == "new_device_new_country":
            return (f"new device {login['device']} from {login['country']}; the account used "
                    f"{len(hist['devices'])} device(s) from {', '.join(hist['countries'])}")
        if brk == "new_device_relay":
            return f"new device {login['device']} through a relayed connection"
        if brk == "shared_device":
            d = ev["device_accounts"]
            return (f"new device {login['device']} already used by {d['accounts']} accounts "
                    f"(expected at most {d['expected_quantile']}, q{d['quantile']})")
        t = ev["travel"]
        return (f"impossible travel: {t['km']} km in {t['hours']} h ({t['speed_kmh']} km/h, "
                f"at most {t['max_speed_kmh']:.0f} km/h) from {hist['last_login']['country']}")

    def _alert(self, login: Login, score: float, evidence: dict[str, Any],
               reasons: list[str]) -> Alert:
        aid = make_alert_id(self.name, "account_takeover", login.account)
        ts = login.ts.timestamp()
        first, version, ids = self._alerts.pop(aid, (ts, 0, []))
        ids = [*ids, login.event_id][-50:]
        self._alerts[aid] = (first, version + 1, ids)
        while len(self._alerts) > self.settings.alerts_max:
            self._alerts.popitem(last=False)
        return Alert(
            alert_id=aid, ts=login.ts, kind="account_takeover", severity=severity_for(score),
            score=score, subject={"account": login.account}, accounts=[login.account],
            event_ids=ids, evidence=evidence, summary=f"{login.account}: " + "; ".join(reasons),
            detector=self.name, first_seen=datetime.fromtimestamp(first, UTC),
            last_seen=login.ts, version=version + 1,
        )


register(TakeoverDetector)
