"""The Kafka ACL plan covers every topic and group the deployment uses, and lets no one but
the workers write the internal topics."""

from __future__ import annotations

from pathsentry.config import KafkaConfig
from pathsentry.infra.acls import acl_commands, acl_plan
from pathsentry.streams.topics import Topics

TOPICS = Topics(KafkaConfig(topic_prefix="prod."))
PLAN = acl_plan(TOPICS)


def _allowed(principal: str, op: str, kind: str, name: str) -> bool:
    return any(g.principal == principal and g.operation == op and g.kind == kind
               and (name == g.resource if g.pattern == "literal" else name.startswith(g.resource))
               for g in PLAN)


def test_the_workers_can_do_what_they_do() -> None:
    w = "User:pathsentry"
    for t in (TOPICS.logins, TOPICS.telemetry, TOPICS.labels, TOPICS.interactions):
        assert _allowed(w, "Read", "topic", t), t
    for t in (TOPICS.sessions, TOPICS.groups, TOPICS.state):
        assert _allowed(w, "Read", "topic", t) and _allowed(w, "Write", "topic", t), t
    for t in (TOPICS.alerts, TOPICS.dead_letter):
        assert _allowed(w, "Write", "topic", t), t
    for group in ("prod.pathsentry", "prod.pathsentry-ingest"):  # the Faust app id, the ingest loop
        assert _allowed(w, "Read", "group", group), group
    assert _allowed(w, "Write", "topic", "prod.pathsentry-__assignor-__leader")  # Faust's own
    assert set(TOPICS.all()) <= {g.resource for g in PLAN}, "a topic without any grant"


def test_only_the_workers_write_the_internal_topics() -> None:
    for t in (TOPICS.sessions, TOPICS.groups, TOPICS.state, TOPICS.alerts):
        writers = {g.principal for g in PLAN if g.operation == "Write"
                   and (g.resource == t or (g.pattern == "prefixed" and t.startswith(g.resource)))}
        assert writers == {"User:pathsentry"}, (t, writers)
    assert not _allowed("User:producer", "Read", "topic", TOPICS.alerts)
    assert not _allowed("User:soc", "Write", "topic", TOPICS.logins)


def test_commands_name_every_grant() -> None:
    cmds = acl_commands(PLAN, "kafka:9092")
    assert len(cmds) == len(PLAN)
    assert all("--bootstrap-server kafka:9092" in c and "--add --allow-principal" in c for c in cmds)
    assert any("--group 'prod.pathsentry' --resource-pattern-type prefixed" in c for c in cmds)
