"""Topic names. Producers write ``logins`` (keyed by account) and
``network-telemetry`` (keyed by session id), and the game's ``labels`` and
``interactions`` (contract v1.1, keyed by account); pathsentry writes ``alerts`` and
``dead-letter`` and uses two internal repartition topics and one topic of the group
stage's farm alerts for the room merger.

>>> from pathsentry.config import KafkaConfig
>>> Topics(KafkaConfig(topic_prefix="prod.")).logins
'prod.logins'
"""

from __future__ import annotations

from dataclasses import dataclass

from pathsentry.config import KafkaConfig

__all__ = ["Topics"]


@dataclass(frozen=True)
class Topics:
    kafka: KafkaConfig

    def _t(self, name: str) -> str:
        return self.kafka.topic(name)

    @property
    def logins(self) -> str:
        return self._t("logins")

    @property
    def telemetry(self) -> str:
        return self._t("network-telemetry")

    @property
    def labels(self) -> str:
        """The game's verdicts on accounts (``account_label``), keyed by account."""
        return self._t("labels")

    @property
    def interactions(self) -> str:
        """Trades, parties… between accounts (``interaction``), keyed by the first account."""
        return self._t("interactions")

    @property
    def alerts(self) -> str:
        return self._t("alerts")

    @property
    def dead_letter(self) -> str:
        return self._t("dead-letter")

    @property
    def sessions(self) -> str:
        """Internal: valid events repartitioned by session id."""
        return self._t("pathsentry-sessions")

    @property
    def groups(self) -> str:
        """Internal: enriched events repartitioned by group key (farm template, ISP…)."""
        return self._t("pathsentry-groups")

    @property
    def rooms(self) -> str:
        """Internal, one partition: the group stage's ``farm_group`` alerts, which the room
        merger joins into one alert per room (one place sees every group partition's)."""
        return self._t("pathsentry-rooms")

    @property
    def state(self) -> str:
        """Internal, compacted: the group partitions' detector state and the session
        partitions' sessions in progress (one partition each)."""
        return self._t("pathsentry-state")

    def all(self) -> dict[str, int]:
        """Every topic with its partition count."""
        n = self.kafka.partitions
        return {
            self.logins: n, self.telemetry: n, self.alerts: n, self.dead_letter: n,
            self.sessions: n, self.groups: n, self.state: n, self.labels: n, self.interactions: n,
            self.rooms: 1,
        }

    def configs(self) -> dict[str, dict[str, str]]:
        """Topic settings beyond the broker's defaults."""
        return {self.state: {"cleanup.policy": "compact"}}
