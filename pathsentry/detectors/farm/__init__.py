"""Gold-farm groups: many accounts at once through one exit and route, look-alike names.

A farm (작업장) runs dozens of accounts from one room: they log in within seconds to
minutes of each other, through the same relay exit (often several /24s of one
hosting AS) or along the same foreign-origin route, from machines a few ms apart,
and usually carry names minted from one stem. This group-stage detector clusters on
what the research clusters on -- time, account name, source address and hop-country
path -- with bounded work per event and bounded state.

Modules, one concern each:

- :mod:`~pathsentry.detectors.farm.families` -- name families (stem, serial,
  generalised template);
- :mod:`~pathsentry.detectors.farm.exits` -- the connection pattern (exit AS,
  route, relay facts) and the learned RTT band;
- :mod:`~pathsentry.detectors.farm.background` -- the partition's background
  arrival rate, the judge of a burst at any pacing;
- :mod:`~pathsentry.detectors.farm.machines` -- which accounts share a client
  machine, and the share of the partition's background that does;
- :mod:`~pathsentry.detectors.farm.ranges` -- which /24s of a hosting range the
  exit's other users come through, and a burst through the ones they do not;
- :mod:`~pathsentry.detectors.farm.lines` -- accounts per home line against the
  learned rate (a farm on residential proxies, no relay flag, no foreign route);
- :mod:`~pathsentry.detectors.farm.hops` -- machines carrying several accounts through
  home lines of several /24s (a room on residential proxies of several ISPs);
- :mod:`~pathsentry.detectors.farm.suspicion` -- logins with a relay score below the
  relay detector's flag, or an RTT excess in the class's learned tail, against the
  share the class's background shows;
- :mod:`~pathsentry.detectors.farm.grouping` -- when a candidate is a farm;
- :mod:`~pathsentry.detectors.farm.groups` -- a farm group formed, found again, joined
  and its alert emitted;
- :mod:`~pathsentry.detectors.farm.evidence` -- features, score, alert and flags;
- :mod:`~pathsentry.detectors.farm.rooms` -- one alert for a room that several
  partitions' groups are parts of (they share accounts), downstream of every partition;
- :mod:`~pathsentry.detectors.farm.state` -- snapshot and restore;
- :mod:`~pathsentry.detectors.farm.model` -- settings and the data the others share;
- :mod:`~pathsentry.detectors.farm.detector` -- :class:`FarmDetector` itself.

Partition keys (the stream repartitions each event by each key, so the accounts of
one group meet on one worker):

``tpl:<stem>``
    logins and traceroutes of names with a family (serial anywhere, rotating letter
    affix; see :func:`~pathsentry.detectors.farm.families.family`). A group is at
    least ``min_size`` accounts of one family within ``window_s`` sharing an AS or a
    foreign route, with relay/route evidence on ``min_size`` of them (or, beside
    serials that run, relay scores on more of them than the class's background
    explains: :mod:`.suspicion`), or with serials (or affix letters) that run
    consecutively -- or the whole family in the window
    with both (a batch spread over several exits); the batch's members through
    other exits join by their serials.
``route:<signature>``
    sessions whose route has a foreign origin, relay-flagged ones and those through
    a hosting network excepted (``net:AS…`` takes them). A group
    is a burst of at least ``min_size_unnamed`` accounts along one signature inside
    one RTT band, names not required.
``net:<exit>``
    relay-flagged logins (and traceroutes) by exit: ``AS<asn>`` of a hosting or
    relay network (with every login through it, flagged or not -- a datacenter
    address is no home, the exit kind stands for a flag the relay detector missed,
    and one farm whose logins it flags only in part, or not at all, is one candidate;
    allow-listed ranges never reach it), the /24 of a subscriber network
    (residential, mobile, campus, business), whose other logins count in the
    partition's background. A group is a burst of relay-flagged accounts behind one
    exit inside one RTT band, sharing /24s or machines (client device ids) -- or, in
    a hosting range, through /24s the exit's other users did not use, at least
    ``min_size_unnamed`` of them both against the /24s the others used (a
    beta-binomial tail) and against the exit's background thinned by that learned
    share (:mod:`.ranges`: a room renting hosts of its own, each of its first accounts
    on a machine and a host of its own). In a subscriber /24, every login on a home
    line (residential, Cable/DSL) is a member too, under the pattern ``line:<24>``: a
    group is the accounts on addresses that carried, within ``window_s``, at least
    the limit learned from the class's home lines (never below
    ``home_accounts + 1``), with the accounts of the /24's other addresses on their
    machines, crowded onto few machines -- or the accounts on machines that each switch
    to a new account within ``switch_s`` of their last, more than a household's and
    tied into a room, their switches a tail event against the class's learned share of
    home-line logins that switch (:mod:`.lines`) -- or the same within ``window_s``
    (slow switches, against their own learned share) when a relay flag or a foreign
    route marks half of the accounts.
``hop:<country>``
    every login on a home line from a known machine, by its exit's country (the key a
    room's proxies on several ISPs share). A machine becomes a member only when it
    *hops* -- two accounts through home lines of two /24s within ``window_s`` -- and
    the others stay bounded sightings; a group is the component of hopping machines
    joined by a shared machine or proxy address, ``min_size_unnamed`` accounts crowded
    onto few machines, when their moves (each hopping machine's /24s beyond its first,
    or its switches of /24 faster than a machine is carried between homes) among the
    machines seen on its addresses are a tail event against the learned share of
    machines that hop (:mod:`.hops`).

Machines. A farm room runs several accounts per machine; a VPN exit's or a
route's unrelated users bring one machine each. In ``route:`` and ``net:AS…`` (every
login of the pattern is a member there) a candidate with at least
``min_size_unnamed`` accounts on machines it shares is judged as a room: all its
accounts on shared machines, whatever RTT each machine's own access gives them
(their spread is measured within each machine:
:func:`~pathsentry.detectors.farm.exits.machine_centred`), band members only when
their machine is unknown, and a burst when those accounts are improbable against
the background's expected count thinned by the band's RTT share *and* by the share
of the background's accounts that shared a machine with another account (learned
online per partition, a name family's batch excepted:
:mod:`~pathsentry.detectors.farm.machines`). A room of shared machines takes a new
machine only with its second account (both join). A name-less group's next burst
joins it when two of its accounts return (a sampled route or a missed relay flag
shows other accounts each burst) or when its machines carry half of the new
candidate.

One farm, one alert: a room found by several partitions (each its share) is joined
downstream into one room alert when their groups share accounts (:mod:`.rooms`); and the
``route:``/``net:`` partitions leave out accounts whose
family reaches ``min_size`` in the candidate (2 in ``route:``: traceroutes may be
sampled) -- the family partition sees every login of those; ``route:`` leaves out
relay-flagged accounts and those through a hosting network, which are ``net:``'s.
A group seen again (members
overlapping by half) is the same group: its alert is re-emitted with
``version + 1``, and its members' later logins are flagged under it. The alert id
is ``make_alert_id("farm", "farm_group", key|pattern|anchor)`` (anchor: the first
member's login second), deterministic for a replay or a retry.

Farms and crowds -- which signal separates each hard negative:

- **PC bang, campus NAT** (dozens of unrelated accounts behind one address, all
  day): not a home line (a PC bang's seat keeps one player an hour or more: it never
  switches accounts within minutes as a room's machine does); a domestic route and,
  mostly, no relay flag; the few logins the relay
  detector flags by mistake are judged against every login of that address (the
  /24's background, its arrival rate and its RTTs), so a handful of flags in a crowd
  is no burst, and their RTTs do not stand out of the crowd's. Their names share
  no family, or a family whose serials do not run.
- **Mobile CGNAT** (thousands of subscribers on a few addresses): the same -- the
  address's background is the whole crowd; what they share is an address, never a
  family with consecutive serials or a foreign route.
- **A relay service with many unrelated users** (a VPN exit or hosting range, or a
  datacenter service on no allow list whose logins the relay detector does not flag):
  they do reach ``net:AS…``, but they arrive at the exit's own background rate (the
  Poisson judge of :mod:`~pathsentry.detectors.farm.background` at both scales,
  thinned to the candidate's RTT band), from everywhere (their RTTs do not form a
  band that stands out of the exit's other users:
  :func:`~pathsentry.detectors.farm.exits.stands_out`; their TCP handshake RTTs
  differ), each from its own machine and its own exit address (a candidate keeps the
  members that share a machine or an address, and those whose machine is unknown --
  known from a traceroute alone -- that share a /24 with two others: the range's users
  meet in its few /24s by chance, so a /24 ties no account seen on a machine of its
  own; one paced minutes apart must crowd onto few machines or addresses; a late
  joiner must use one of the group's machines, or inside its band one of its exit
  addresses -- one of its /24s if its machine is unknown). The few that share a
  machine (a household) or an address do so at the rate the exit's background has
  taught (:mod:`.machines`, :func:`~pathsentry.detectors.farm.exits.address_share`),
  so their clumps are no burst of shared machines or hosts either, while a room's
  accounts crowded onto a few hosts of the range are one even when the exit is busy.
  Their /24s are the service's: the few its users share teach a small chance of an
  unused one, so a room through /24s of its own stands out from its first logins,
  while a service spread over many /24s (many seen once) teaches a large one and no
  clump of its users through unused /24s surprises (:mod:`.ranges`; a handful of
  other users' /24s teaches nothing). A service that moves its users onto a /24 they
  never used (a failover, a new exit host in its rotation) brings them through an unused
  /24 in a burst, or at its own rate: they still come from everywhere, their RTTs spread
  as the exit's other users' do, and the unused-/24 judge takes only members whose RTTs
  stand out of those. Allow-listed game relays and cloud gaming never
  reach ``net:``.
- **Players who each bring an alt through a quiet VPN exit** (two accounts on one
  machine and one exit address, a pair at a time): each pair shares its machine and
  address, but no pair shares either with another, and every judge of shared machines
  or addresses takes only accounts that are one room's -- three or more tied together
  by a machine or an exit address they share (:func:`.machines.one_room`). A player
  who switches between a main and an alt for hours still brings two accounts; a
  room's machine that logs in a new account every half hour or more carries a third
  within twice the window, which ties it (and makes it a *cycling* machine, judged
  against the share of the exit's other machines that carry three:
  :func:`.machines.cycling_burst`); one that takes a new account every hour or two
  carries its third within ``cycle_horizon_s`` on an exit address another of the
  room's machines used too -- a player playing three accounts in turn over hours
  does so on a machine and an address of its own (:func:`.machines.room_machine`).
- **A family at home, friends on two ISPs** (a home line's accounts): a household
  stays within the learned accounts-per-line limit and its machines never leave its
  line; a family PC's two to five players take turns at long sessions and replay the
  same accounts, where a room's machine switches to a new account every minute or so
  (siblings switching within minutes are a pair on a PC of their own, which no room
  ties: :mod:`.lines`); friends each bring their own line and machine (a laptop carried to a friend's
  with a second account hops alone: no tail event); a residential proxy service's
  unrelated users crowd one address, or rotate over many, but each from its own
  machine with its own account (:mod:`.lines`, :mod:`.hops`).
- **Honest players sharing a popular stem** (``shadow123``, ``shadow_77``): one
  family, but spread over exits and hours, their serials do not run consecutively,
  and they carry no relay or foreign-route evidence (relay scores below the flag count
  only beside serials that run).
- **Friends who signed up together** (consecutive default names, each at home on a
  machine of their own): serials run, but nothing is shared but an address or two, and
  their logins carry relay scores no more often than the class's background, and RTT
  excesses in its tail no more often either (:mod:`.suspicion`; a class with little
  history suspects nothing by relay score, and judges excesses by the documented prior
  of an honest line's, a few ms either way).
- **Family names** (``minsu_kim``/``minsu_park``): no mark, no family.

Cold partitions. A partition with little history (the detector's first hour, an
exit met for the first time) is judged against its class's prior: the arrival rate
and machine share pooled over the partitions of its class (hosting AS, subscriber
/24, route; :class:`~pathsentry.detectors.farm.model.Pool`), shrunk toward its own
history as that grows (:mod:`.background`, :mod:`.machines`), so a slowly paced
name-less farm is judged at both scales from the first minutes instead of waiting
for its next burst. The class's pooled rate is shrunk in turn toward the documented
default ``background_prior_rate_h`` (1 login an hour per partition, weighted as
``background_prior_s`` seconds of one partition's observation), and the logins of
groups found (and of a name family's batch, in a name-less partition) leave the
counts: in a small or young world the class's few arrivals are mostly the farms
themselves, which would otherwise hide each other. A name family's consecutive
serials all through one hosting AS are a batch without relay flags (the exit kind
stands for flags the relay detector missed), and a family's batch spread over
residential exits of several ISPs (none with ``min_size`` of it) is one when its
serials run and it crowds onto few machines.
Within one exit network, a family's consecutive serials crowding onto few addresses
count only on home lines (residential): a mobile CGNAT, campus or PC-bang address is
a crowd's, a launch-day crowd handed consecutive default names among it.

Known limits: a name-less farm on residential proxies of several /24s is one group
across them only through machines that hop (:mod:`.hops`); a room whose machines each
keep to one proxy address is one group per /24 (partitions on different workers), joined
into one room alert only through groups that share accounts with them -- its route's, its
hopping machines' (:mod:`.rooms`) -- and one whose proxy addresses each carry
no more accounts than a household is not found by its lines; a room found across its
/24s keeps its /24s' home-line alerts beside that one; on a hosting exit, an account
known only from its traceroute (the route note came after its login) carries no
machine, so the machine judge sees fewer of the farm's accounts there; the prior is
learned per worker (the partitions of a class that one worker holds), so a cold
partition's expectation depends on which partitions share its worker until its own
history outweighs the prior; in a busy hosting exit, households whose second account
shares their machine within the window join a room found there (the room takes every
account on a machine shared in the window); the machine judge does not apply to a /24
exit (its unflagged logins are background only, their machines unknown); a farm whose
logins are neither relay-flagged nor routed through a foreign origin, with names that
share no family, has nothing left to be found by but its accounts per home line and its
machines switching accounts (one on several ISPs whose machines each keep to one proxy
address is one group per /24, each /24's share of the room: nothing but their
concurrent timing ties them); a
farm that reuses a popular stem (``shadow…``) can take an honest ``shadow`` player
whose number happens to continue its serials; a family batch on home lines of several
ISPs, relay-flagged on fewer than ``min_size`` of it and not crowded onto few machines,
is found by the relay-score and RTT-excess tails alone (:mod:`.suspicion`): the
relay-score tail needs history (five of five above the class's home-line logins pass
``max_burst_p`` from 13 of those on: the beta-binomial tail of 5 of 5 above 0 of 13 is
8.6e-05; above 3 of them it is 1 in 56 for any judge learned from the traffic alone,
every order of the eight logins being equally likely for a crowd -- no prior share is
assumed for it, a crowd's first logins may all carry a relay score), while the excess
tail starts from a documented prior of an honest line's excess (``excess_prior_sd_ms``,
weighted as ``excess_prior_logins`` logins), so a batch far over its exits' expectation
is judged in a quiet world's first hour -- and friends on rural lines, all 25 ms over,
who sign up together in a class's first minutes are judged by that prior too, until a
hundred or so of the class's logins have taught its tail;
logins that failed are never members (a failed login opens no session), so a batch of
five with one failed login is four accounts to the detector.

Bounds: at most ``max_keys`` partitions (least recently used evicted), at most
``max_members`` members per partition (members older than ``2 * window_s`` go first),
at most ``max_group_members`` per group; an idle group is kept ``group_ttl_s`` for
late joiners. Per event: one dictionary lookup per key, a scan of the members sharing
one pattern in one window, O(bands) for the MinHash name index
(:class:`~pathsentry.detectors.names.NameIndex`, whose clusters the evidence shows);
in a ``hop:`` partition a login of a machine not seen hopping costs its machine's
sightings (at most :data:`~.hops.MAX_PER_DEVICE`) and is neither named nor indexed,
and its sightings hold at most ``hop_max_devices`` machines and addresses; the RTT-
excess histogram is a fixed 320 bins per worker. River's DBSTREAM was considered for
the clustering; its ``predict_one`` walks every micro-cluster, and every dimension but
time is categorical here, so exact keys plus the family rules do the job in bounded
time.

>>> settings_from({"window_s": "600", "unknown": 1}).window_s
600.0
"""

from __future__ import annotations

from pathsentry.detectors.farm.background import poisson_tail
from pathsentry.detectors.farm.detector import FarmDetector
from pathsentry.detectors.farm.model import FarmSettings, settings_from

__all__ = ["FarmDetector", "FarmSettings", "poisson_tail", "settings_from"]
