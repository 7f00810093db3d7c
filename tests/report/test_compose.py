"""docker-compose.yml and its assets, checked for meaning without Docker: services and
their order, KRaft settings, variables, secrets, the worker image, mounts, Grafana."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from pathsentry.infra.clickhouse import ddl_statements
from tests.prometheus import PROMETHEUS_UID, dashboard_metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "infra" / "compose.env.example"
GRAFANA = ROOT / "infra" / "grafana"
#: The compose-spec JSON Schema, if someone put it here (never downloaded by the tests).
#: fetched by scripts/compose-schema (scripts/test runs it)
SCHEMA = Path(os.environ.get("PATHSENTRY_COMPOSE_SCHEMA",
                             Path(__file__).parents[2] / ".cache" / "compose-spec.json"))

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $VAR; $$ escapes.
VAR = re.compile(
    r"(?<!\$)\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))"
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|CREDENTIAL", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc = compose["services"]
    assert isinstance(svc, dict)
    return svc


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _example_vars() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _depends(service: dict[str, Any]) -> dict[str, str]:
    dep = service.get("depends_on") or {}
    if isinstance(dep, list):
        return dict.fromkeys(dep, "service_started")
    return {k: (v or {}).get("condition", "service_started") for k, v in dep.items()}


def _dockerfile(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / str(build.get("context", ".")) / str(build.get("dockerfile", "Dockerfile"))


def _final_stage(dockerfile: Path) -> list[str]:
    """Instructions of the last build stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    return lines[starts[-1]:]


def _has_healthcheck(service: dict[str, Any]) -> bool:
    hc = service.get("healthcheck")
    if hc is not None:
        return not hc.get("disable", False) and hc.get("test") not in (None, ["NONE"])
    df = _dockerfile(service)
    return df is not None and any(ln.upper().startswith("HEALTHCHECK CMD") or (
        ln.upper().startswith("HEALTHCHECK ") and " CMD " in ln.upper()) for ln in _final_stage(df))


def test_the_deployment_has_its_services(services: dict[str, Any]) -> None:
    assert {"kafka", "clickhouse", "topic-init", "worker", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert _dockerfile(services["worker"]) == _dockerfile(services["topic-init"])


def test_kafka_runs_in_kraft_mode(services: dict[str, Any]) -> None:
    env = _env(services["kafka"])
    assert not [k for k in env if "ZOOKEEPER" in k]
    assert {"broker", "controller"} <= {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    listeners = {ln.split("://")[0] for ln in env["KAFKA_LISTENERS"].split(",")}
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners
    node, _, address = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")[0].partition("@")
    assert node == env["KAFKA_NODE_ID"]
    port = address.rpartition(":")[2]
    assert f"{controller}://:{port}" in env["KAFKA_LISTENERS"].split(",")
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listeners <= set(protocols)


def test_start_order(services: dict[str, Any]) -> None:
    worker = _depends(services["worker"])
    assert worker.get("topic-init") == "service_completed_successfully"
    assert worker.get("clickhouse") == "service_healthy"
    assert services["topic-init"]["command"][0] == "topics"
    for name, svc in services.items():
        for dep, condition in _depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert _has_healthcheck(services[dep]), f"{name} waits for {dep} health, {dep} has no check"
    # no dependency cycles
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(_depends(s)) <= set(order)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        order.extend(sorted(ready))
        for n in ready:
            del pending[n]


def test_every_variable_is_defined_or_has_a_default(compose: dict[str, Any]) -> None:
    defined = _example_vars()
    undefined = set()
    for s in _strings(compose):
        for m in VAR.finditer(s):
            name = m["braced"] or m["bare"]
            has_default = m["op"] in (":-", "-") if m["braced"] else False
            if name not in defined and not has_default:
                undefined.add(name)
    assert not undefined, (
        f"used in docker-compose.yml without a default and missing from {ENV_EXAMPLE.relative_to(ROOT)}: "
        f"{sorted(undefined)} (add NAME=placeholder lines there)"
    )


def _secret_values(compose: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for name, svc in compose["services"].items():
        for key, value in _env(svc).items():
            if SECRET_NAME.search(key):
                yield name, key, value


def test_no_secret_values_are_committed(compose: dict[str, Any]) -> None:
    for service, key, value in _secret_values(compose):
        m = VAR.fullmatch(value)
        assert m and m["op"] not in (":-", "-", ":+"), f"{service}.{key} must come from the environment only"
    for s in _strings(compose):
        for user_pass in re.findall(r"://([^/@\s]+)@", s):
            assert all(VAR.fullmatch(part) for part in user_pass.split(":")), f"credentials in URL {s!r}"
    for path in GRAFANA.rglob("*.y*ml"):
        doc = yaml.safe_load(path.read_text())
        for ds in doc.get("datasources", []):
            for key, value in (ds.get("secureJsonData") or {}).items():
                assert VAR.fullmatch(str(value)), f"{path.name}: secureJsonData.{key} is not an env reference"


def test_secret_check_catches_a_literal_password() -> None:
    leaky = {"services": {"db": {"environment": {"DB_PASSWORD": "hunter2"}}}}
    defaulted = {"services": {"db": {"environment": ["DB_PASSWORD=${DB_PASSWORD:-hunter2}"]}}}
    for doc in (leaky, defaulted):
        (_, _, value), = _secret_values(doc)
        m = VAR.fullmatch(value)
        assert not (m and m["op"] not in (":-", "-", ":+"))


def test_worker_image_is_non_root_with_a_healthcheck(services: dict[str, Any]) -> None:
    dockerfile = _dockerfile(services["worker"])
    assert dockerfile is not None and dockerfile.is_file()
    stage = _final_stage(dockerfile)
    users = [ln.split(None, 1)[1].strip() for ln in stage if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root USER"
    assert _has_healthcheck(services["worker"])


def test_worker_image_copies_existing_files(services: dict[str, Any]) -> None:
    dockerfile = _dockerfile(services["worker"])
    assert dockerfile is not None
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for m in re.finditer(r"^COPY\s+(?!--from)(.+)$", text, re.MULTILINE):
        *sources, _dest = m[1].split()
        for src in sources:
            if not src.startswith("--"):
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY source {src} does not exist"


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol["source"] if isinstance(vol, dict) else str(vol).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in named, f"{name} uses undeclared volume {source}"


def test_grafana_is_provisioned(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    assert grafana["image"].split(":")[0] in ("grafana/grafana", "grafana/grafana-oss")
    env = _env(grafana)
    assert "grafana-clickhouse-datasource" in env["GF_INSTALL_PLUGINS"].split(",")
    assert VAR.fullmatch(env["GF_SECURITY_ADMIN_PASSWORD"])
    mounts = {v.split(":")[1]: v for v in grafana["volumes"] if v.startswith("./")}
    assert mounts["/etc/grafana/provisioning"].endswith(":ro")

    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/clickhouse.yaml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "grafana-clickhouse-datasource"
    for ref in (ds["jsonData"]["username"], ds["secureJsonData"]["password"], ds["jsonData"]["host"]):
        name = VAR.fullmatch(ref)
        assert name and (name["braced"] or name["bare"]) in env, f"Grafana does not get {ref}"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/pathsentry.yaml").read_text())
    (provider,) = providers["providers"]
    dash_mount = mounts[provider["options"]["path"]]
    assert dash_mount.endswith(":ro")
    dashboards = list((ROOT / dash_mount.split(":")[0]).glob("*.json"))
    assert dashboards

    created = re.compile(r"^CREATE (?:OR REPLACE )?(?:TABLE|VIEW)(?: IF NOT EXISTS)? pathsentry\.(\w+)")
    relations = {m for s in ddl_statements("pathsentry", 1) for m in created.findall(s)}
    titles = []
    for path in dashboards:
        for panel in json.loads(path.read_text())["panels"]:
            titles.append(panel["title"].lower())
            for target in panel["targets"]:
                if target["datasource"]["uid"] == PROMETHEUS_UID:
                    continue  # checked against a running worker's /metrics (test_worker_metrics)
                assert target["datasource"]["uid"] == ds["uid"]
                used = set(re.findall(r"pathsentry\.(\w+)", target["rawSql"]))
                assert used and used <= relations, f"{panel['title']}: unknown relation {used - relations}"
    for topic in ("alerts over time", "asn", "prefixes", "farm groups", "injection cells by hour"):
        assert any(topic in t for t in titles), f"no panel about {topic}"
    assert dashboard_metrics(ROOT / dash_mount.split(":")[0]), "no panel on the workers' Prometheus metrics"


def test_prometheus_scrapes_every_worker(services: dict[str, Any]) -> None:
    """Prometheus finds the worker replicas by the service's name, on the port their web
    server listens on, and Grafana reads it through a provisioned datasource."""
    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] if v.startswith("./")}
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    config = yaml.safe_load((ROOT / mounts[config_path]).read_text())
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["dns_sd_configs"]
    worker_cmd = services["worker"]["command"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    assert str(sd["port"]) == worker_cmd[worker_cmd.index("--web-port") + 1]
    assert _depends(services["grafana"]).get("prometheus") == "service_healthy"
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == PROMETHEUS_UID
    assert ds["url"].split("://")[1].split(":")[0] == "prometheus"


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"compose-spec JSON Schema not present at {SCHEMA} "
                    "(scripts/compose-schema fetches it; or set PATHSENTRY_COMPOSE_SCHEMA)")
def test_compose_spec_schema(compose: dict[str, Any]) -> None:
    """The file validates against the Compose Specification schema. That schema (the one
    docker-compose 1.29.2 ships) predates the top-level ``name``, so the project name is
    checked against the specification's rule for it instead."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    assert "services" in schema["properties"] and "name" not in schema["properties"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", compose["name"])
    jsonschema.validate({k: v for k, v in compose.items() if k != "name"}, schema)
    broken = {**compose, "services": {**compose["services"], "worker": {
        **compose["services"]["worker"], "depends_on": {"kafka": {"condition": "whenever"}}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in broken.items() if k != "name"}, schema)
