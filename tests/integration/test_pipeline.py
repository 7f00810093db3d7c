"""End to end on the embedded engines: Tansu (Kafka protocol), a `pathsentry
worker` process (Faust) and chDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathsentry.infra.broker import EmbeddedBroker
from tests.integration.harness import run_scenario, running_worker


@pytest.mark.integration
def test_events_flow_to_chdb_alerts_and_dead_letter(tmp_path: Path, embedded_broker: EmbeddedBroker) -> None:
    with running_worker(tmp_path, embedded_broker.url, f"chdb://{tmp_path / 'chdb'}") as worker:
        run_scenario(worker)
