"""The takeover detector's saved state, as it must look to be loaded.

A typed model of what :meth:`~pathsentry.detectors.takeover.TakeoverDetector.state`
(and its learned state, the same document) writes, with the rules of
:mod:`pathsentry.detectors.saved`: each account's login count, the devices, subnets,
OSes, countries, ASNs and prefixes it used (each with the time it last did, no later
than a day past the wall clock), its last login's time, place and device; and the
accounts seen per device.

>>> from pathsentry.detectors.saved import StateInvalid
>>> try:
...     check_takeover_state({"version": 1, "accounts": [["a", {"logins": -3}]], "devices": []})
... except StateInvalid as e:
...     print(e)
takeover state: accounts.0.1.logins: Input should be greater than or equal to 0
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from pathsentry.detectors.saved import Count, Name, Record, Saved, Ts, check

__all__ = ["check_takeover_state"]

Lat = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Lon = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
Asn = Annotated[int, Field(ge=0, le=2**32 - 1)]
Seen = list[tuple[Name, Ts]]


class _History(Record, total=False):
    logins: Count
    devices: Seen
    subnets: Seen
    oses: Seen
    countries: Seen
    asns: list[tuple[Asn, Ts]]
    prefixes: Seen
    last: tuple[Ts | None, Lat | None, Lon | None, Name | None, Name | None]


class _State(Saved):
    version: Literal[1]
    accounts: list[tuple[Name, _History]] = Field(default_factory=list)
    devices: list[tuple[Name, list[Name]]] = Field(default_factory=list)


def check_takeover_state(state: Any) -> None:
    """Refuse account histories and device accounts not as saved."""
    check(_State, state, "takeover state")
