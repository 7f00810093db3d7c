"""The Kafka ACLs a production deployment needs: who may read and write which topic.

Owns :func:`acl_plan` (the grants, from the deployment's :class:`Topics` and consumer
group names) and :func:`acl_commands` (the same as ``kafka-acls.sh`` command lines, for a
broker with an authorizer and authenticated principals). Principals:

- the workers: read the input topics and the consumer groups, read and write the internal
  topics (sessions, groups, rooms, state) and Faust's own (a PREFIXED grant on the app id), write
  ``alerts`` and ``dead-letter``;
- the event producers (the game backend, sensors): write the input topics only;
- the alert consumers (the SOC): read ``alerts`` and ``dead-letter`` only, in consumer
  groups named ``<prefix>soc…``.

Nobody but the workers may write the internal topics: whoever can feeds the group stage
and the saved state. ``python -m pathsentry.infra.acls [--bootstrap HOST:PORT]
[--command-config FILE] [--kafka-acls PATH] [--out FILE]`` prints (or writes) the commands
for the configuration in ``PATHSENTRY_CONFIG``; the compose file's ``acl-gen`` service runs
it and its ``acl-init`` service runs what it wrote.

>>> from pathsentry.config import KafkaConfig
>>> from pathsentry.streams.topics import Topics
>>> plan = acl_plan(Topics(KafkaConfig(topic_prefix="prod.")))
>>> sorted(g.operation for g in plan if g.resource == "prod.pathsentry-state")
['Read', 'Write']
>>> {g.principal for g in plan if g.operation == "Write" and g.resource == "prod.logins"}
{'User:producer'}
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pathsentry.streams.topics import Topics

__all__ = ["Grant", "acl_commands", "acl_plan"]


@dataclass(frozen=True)
class Grant:
    principal: str
    operation: str
    #: "topic" or "group"
    kind: str
    resource: str
    #: "literal" or "prefixed"
    pattern: str = "literal"


def acl_plan(topics: Topics, *, worker: str = "User:pathsentry", producer: str = "User:producer",
             reader: str = "User:soc") -> list[Grant]:
    """Every grant the deployment needs (nothing else should be allowed)."""
    prefix = topics.kafka.topic_prefix
    inputs = [topics.logins, topics.telemetry, topics.labels, topics.interactions]
    internal = [topics.sessions, topics.groups, topics.rooms, topics.state]
    out = [Grant(worker, op, "topic", t) for t in inputs for op in ("Read", "Describe")]
    out += [Grant(worker, op, "topic", t) for t in internal for op in ("Read", "Write")]
    out += [Grant(worker, "Write", "topic", t) for t in (topics.alerts, topics.dead_letter)]
    # Faust's own topics and both consumer groups are named after the app id
    out += [Grant(worker, op, kind, f"{prefix}pathsentry", "prefixed")
            for kind, ops in (("topic", ("Read", "Write", "Create")), ("group", ("Read",)))
            for op in ops]
    out += [Grant(producer, "Write", "topic", t) for t in inputs]
    out += [Grant(reader, "Read", "topic", t) for t in (topics.alerts, topics.dead_letter)]
    out.append(Grant(reader, "Read", "group", f"{prefix}soc", "prefixed"))
    return out


def acl_commands(plan: list[Grant], bootstrap: str = "kafka:9092",
                 command_config: str = "/etc/kafka/admin.properties",
                 kafka_acls: str = "kafka-acls.sh") -> list[str]:
    """``kafka-acls.sh`` command lines that create ``plan`` (``kafka_acls``: the script's path)."""
    return [f"{kafka_acls} --bootstrap-server {bootstrap} --command-config {command_config} "
            f"--add --allow-principal {g.principal} --operation {g.operation} "
            f"--{g.kind} '{g.resource}' --resource-pattern-type {g.pattern}" for g in plan]


def main(argv: list[str] | None = None) -> None:
    from pathsentry.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="kafka:9092")
    ap.add_argument("--command-config", default="/etc/kafka/admin.properties",
                    help="the admin client's properties file, where the commands run")
    ap.add_argument("--kafka-acls", default="kafka-acls.sh", help="path of kafka-acls.sh there")
    ap.add_argument("--out", help="write the commands to this file (default: print them)")
    args = ap.parse_args(argv)
    text = "\n".join(acl_commands(acl_plan(Topics(load_config().kafka)), args.bootstrap,
                                  args.command_config, args.kafka_acls)) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
