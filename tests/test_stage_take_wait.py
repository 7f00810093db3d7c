"""``[kafka] stage_take_wait_ms``: how long a stage's agent waits for more envelopes after
each batch (the app caps it at ``[clickhouse] flush_interval_s``)."""

from __future__ import annotations

import pytest

from pathsentry.config import ConfigError, load_config


def test_default_is_50_ms_and_a_configured_wait_is_taken() -> None:
    assert load_config(text="", env={}).kafka.stage_take_wait_ms == 50
    assert load_config(text="[kafka]\nstage_take_wait_ms = 10\n", env={}).kafka.stage_take_wait_ms == 10


@pytest.mark.parametrize("value", ["0", "-5", "20000", '"soon"'])
def test_a_wait_out_of_range_or_not_a_number_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="stage_take_wait_ms"):
        load_config(text=f"[kafka]\nstage_take_wait_ms = {value}\n", env={})
