"""The compose file's Kafka authenticates and authorizes every client, and the ACLs it
applies are exactly those ``pathsentry.infra.acls`` makes for its configuration. Checked
without Docker: the broker's settings, the principals and who uses which, the ``acl-gen``
service run here as the compose file runs it, the ``acl-init`` service's wiring to what
it wrote, and the admin client's properties script run with ``sh``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from pathsentry.config import load_config
from pathsentry.infra.acls import Grant, acl_commands, acl_plan
from pathsentry.streams.topics import Topics
from tests.report.test_compose import COMPOSE_FILE, ROOT, VAR, _depends, _env


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    svc: dict[str, dict[str, Any]] = doc["services"]
    return svc


def _jaas_users(jaas: str) -> dict[str, str]:
    """user name -> the variable its password comes from, in a PLAIN JAAS configuration."""
    out = {}
    for user, value in re.findall(r'user_(\w+)="([^"]*)"', jaas):
        m = VAR.fullmatch(value)
        assert m, f"user {user}: its password is not a variable"
        out[user] = m["braced"] or m["bare"]
    return out


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (host path or volume name)."""
    out = {}
    for vol in service.get("volumes", []):
        source, target = str(vol).split(":")[:2]
        out[target] = source
    return out


def test_kafka_authenticates_and_authorizes_every_client(services: dict[str, Any]) -> None:
    env = _env(services["kafka"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) <= {"SASL_PLAINTEXT", "SASL_SSL"}, "a listener without authentication"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert env["KAFKA_SUPER_USERS"] == "User:admin"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    mechanisms = env["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    for listener in protocols:
        assert f"KAFKA_LISTENER_NAME_{listener}_PLAIN_SASL_JAAS_CONFIG" in env, listener
    assert env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] in mechanisms
    assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] in mechanisms
    # the broker connects to itself as the super user
    for listener in protocols:
        jaas = env[f"KAFKA_LISTENER_NAME_{listener}_PLAIN_SASL_JAAS_CONFIG"]
        assert 'username="admin"' in jaas and _jaas_users(jaas)["admin"] == "KAFKA_ADMIN_PASSWORD"


def test_one_principal_per_role_and_each_client_uses_its_own(services: dict[str, Any]) -> None:
    kafka = _env(services["kafka"])
    users = _jaas_users(kafka["KAFKA_LISTENER_NAME_BROKER_PLAIN_SASL_JAAS_CONFIG"])
    plan = acl_plan(Topics(load_config(text="", env={}).kafka))
    assert {g.principal for g in plan} | {"User:admin"} == {f"User:{u}" for u in users}
    assert len(set(users.values())) == len(users), "two principals share a password"
    for service, user in (("worker", "pathsentry"), ("topic-init", "admin")):
        env = _env(services[service])
        assert env["PATHSENTRY_KAFKA_SECURITY_PROTOCOL"] in ("SASL_PLAINTEXT", "SASL_SSL")
        assert env["PATHSENTRY_KAFKA_SASL_MECHANISM"] in kafka["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
        assert env["PATHSENTRY_KAFKA_SASL_USERNAME"] == user, service
        m = VAR.fullmatch(env["PATHSENTRY_KAFKA_SASL_PASSWORD"])
        assert m and (m["braced"] or m["bare"]) == users[user], service
    worker_grants = {g for g in plan if g.principal == "User:pathsentry"}
    assert worker_grants and not any(g.principal == "User:admin" for g in plan)


def _run_acl_gen(services: dict[str, Any], out_dir: Path, prefix: str) -> tuple[list[str], str]:
    """Run the acl-gen service's command here, its container paths mapped to this checkout
    and ``out_dir``; (its commands, the container path it wrote them to)."""
    gen = services["acl-gen"]
    argv = [*gen["entrypoint"], *gen["command"]]
    assert argv[:3] == ["python", "-m", "pathsentry.infra.acls"]
    mounts = _mounts(gen)
    env = _env(gen)
    out = argv[argv.index("--out") + 1]
    (volume_dir, volume), = [(t, s) for t, s in mounts.items() if out.startswith(t + "/")]
    config = env["PATHSENTRY_CONFIG"]
    argv[argv.index("--out") + 1] = str(out_dir / Path(out).relative_to(volume_dir))
    run_env = {**os.environ, "PATHSENTRY_CONFIG": str(ROOT / mounts[config]),
               "PATHSENTRY_TOPIC_PREFIX": prefix}
    subprocess.run([sys.executable, *argv[1:]], env=run_env, check=True, cwd=ROOT, timeout=120)
    lines = (out_dir / Path(out).relative_to(volume_dir)).read_text().splitlines()
    return lines, f"{volume}:{out}"


@pytest.mark.parametrize("prefix", ["", "prod."])
def test_acl_init_applies_exactly_what_the_module_makes(services: dict[str, Any], tmp_path: Path,
                                                        prefix: str) -> None:
    lines, written = _run_acl_gen(services, tmp_path, prefix)
    config = load_config(ROOT / "infra" / "pathsentry.example.toml",
                         env={"PATHSENTRY_TOPIC_PREFIX": prefix})
    plan = acl_plan(Topics(config.kafka))
    assert {g.resource.startswith(prefix) for g in plan} == {True}

    # the commands are the module's, for the broker, the admin client and the script acl-init has
    init = services["acl-init"]
    assert init["image"] == services["kafka"]["image"]
    script = " ".join(init["command"])
    admin_props = re.search(r"admin-client\.sh (\S+)", script)
    assert admin_props
    bootstrap = _env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"].split("://")[1]
    assert lines == acl_commands(plan, bootstrap, admin_props[1], "/opt/kafka/bin/kafka-acls.sh")
    granted = set()
    for line in lines:
        a = shlex.split(line)
        assert a[0] == "/opt/kafka/bin/kafka-acls.sh" and a[a.index("--command-config") + 1] == admin_props[1]
        kind = "topic" if "--topic" in a else "group"
        granted.add(Grant(a[a.index("--allow-principal") + 1], a[a.index("--operation") + 1], kind,
                          a[a.index(f"--{kind}") + 1], a[a.index("--resource-pattern-type") + 1]))
    assert granted == set(plan)

    # acl-init runs the very file acl-gen wrote, through the volume they share, after it
    volume, path = written.split(":")
    (mounted,) = [t for t, s in _mounts(init).items() if s == volume]
    run = re.search(r"sh -e (\S+)", script)
    assert run and run[1] == mounted + path[len(next(t for t, s in _mounts(services["acl-gen"]).items()
                                                     if s == volume)):]
    assert "admin-client.sh" in script and script.index("admin-client.sh") < script.index("sh -e")
    assert _depends(init) == {"kafka": "service_healthy", "acl-gen": "service_completed_successfully"}
    assert _depends(services["worker"]).get("acl-init") == "service_completed_successfully"


def test_admin_client_properties_keep_the_password_to_their_file(tmp_path: Path) -> None:
    secret = "adm1n-pw-4b9c-never-printed"
    out = tmp_path / "admin.properties"
    r = subprocess.run(["sh", str(ROOT / "infra" / "kafka" / "admin-client.sh"), str(out)],
                       env={"PATH": os.environ["PATH"], "SASL_ADMIN_PASSWORD": secret},
                       capture_output=True, text=True, timeout=30, check=True)
    assert secret not in r.stdout + r.stderr
    props = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert props["security.protocol"] == "SASL_PLAINTEXT" and props["sasl.mechanism"] == "PLAIN"
    assert f'username="admin" password="{secret}";' in props["sasl.jaas.config"]
    assert out.stat().st_mode & 0o077 == 0, "readable by others"
    missing = subprocess.run(["sh", str(ROOT / "infra" / "kafka" / "admin-client.sh"), str(tmp_path / "x")],
                             env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0 and not (tmp_path / "x").exists()
