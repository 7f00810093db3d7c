"""``pathsentry settings``: every detector's thresholds, as a configuration sets them,
printed as TOML that is itself a valid configuration."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from pathsentry.cli import main
from pathsentry.commands.settings import settings_toml
from pathsentry.config import load_config
from pathsentry.detectors import DetectorContext, registered
from pathsentry.detectors.crosscheck import CrossCheckSettings
from pathsentry.detectors.latency.scoring import DEFAULTS as LATENCY
from pathsentry.detectors.settings import dict_docs, field_docs, recording
from pathsentry.detectors.takeover import TakeoverSettings


def tables(text: str) -> dict[str, dict[str, object]]:
    return tomllib.loads(text)["detectors"]  # type: ignore[no-any-return]


def test_every_detector_and_every_setting_is_printed_with_its_default() -> None:
    out = tables(settings_toml(load_config(text="", env={})))
    assert set(out) == set(registered()) | {"crosscheck"}
    assert {k: v for k, v in out["latency"].items() if k != "enabled"} == LATENCY
    assert out["crosscheck"] == dataclasses.asdict(CrossCheckSettings())
    assert all(t.get("enabled", True) is True for t in out.values())


def test_the_output_is_a_configuration_that_sets_the_same_values() -> None:
    changed = ("[detectors.latency]\ngap_z = 4.0\n[detectors.farm]\nenabled = false\n"
               "[detectors.takeover]\nmin_history = 5\n")
    text = settings_toml(load_config(text=changed, env={}))
    assert "gap_z = 4.0  # default 3.0; noise scales" in text
    assert "[detectors.farm]\nenabled = false  # default true" in text
    assert "min_history = 5  # default 3; logins an account needs" in text
    again = settings_toml(load_config(text=text, env={}))
    assert tables(again) == tables(text)
    assert tables(text)["latency"]["gap_z"] == 4.0


def test_a_value_the_detector_refuses_is_refused_here_too() -> None:
    with pytest.raises(ValueError, match=r"\[detectors.takeover\] min_history"):
        settings_toml(load_config(text="[detectors.takeover]\nmin_history = 'many'\n", env={}))


def test_comments_come_from_the_declarations() -> None:
    assert field_docs(TakeoverSettings)["min_history"].startswith("logins an account needs")
    assert "1 - gap_alpha" in dict_docs("pathsentry.detectors.latency.defaults")["gap_alpha"]
    # a comment spread over two lines is one
    assert dict_docs("pathsentry.detectors.route")["min_samples"].endswith("fewer: unverified")
    assert dict_docs("no.such.module") == {}


def test_loads_outside_a_recording_are_not_recorded() -> None:
    with recording() as seen:
        pass
    CrossCheckSettings.from_settings({})
    assert seen == {}


def test_the_command_prints_the_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "pathsentry.toml"
    cfg.write_text("[detectors.route]\nmin_samples = 5\n", encoding="utf-8")
    assert main(["settings", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert tables(out)["route"]["min_samples"] == 5
    assert "min_samples = 5  # default 3; RTT samples a hop needs" in out


@pytest.mark.parametrize(("text", "said"), [
    ("[detectors.farm]\nenabled = \"yes\"\n", "[detectors.farm] enabled: 'yes' is not true or false"),
    ("[detectors.takeover]\nmin_history = \"x\"\n", "[detectors.takeover] min_history: 'x' is not a int"),
    ("[kafka]\npartitions = \"x\"\n", "kafka.partitions: Input should be a valid integer"),
    ("[kafka]\nsasl_password = 987654321\n", "kafka.sasl_password: Input should be a valid string"),
    ("x = [\n", "not TOML"),
])
def test_a_configuration_refused_is_named_without_a_traceback_or_its_value(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, said: str) -> None:
    cfg = tmp_path / "pathsentry.toml"
    cfg.write_text(text, encoding="utf-8")
    assert main(["settings", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pathsentry settings: configuration refused: ") and said in err
    assert "Traceback" not in err and "987654321" not in err


def test_every_setting_says_what_it_is() -> None:
    """A new threshold without its ``#:`` comment fails here: the operator reading
    ``pathsentry settings`` must see what each one does."""
    from pathsentry.enrich.geo import GeoResolver

    ctx = DetectorContext(load_config(text="", env={}), GeoResolver([]))
    with recording() as seen:
        for cls in registered().values():
            cls(ctx)
        CrossCheckSettings.from_settings({})
    missing = [f"{section}.{key}" for section, table in seen.items()
               for key, s in table.items() if not s.doc]
    assert missing == []
