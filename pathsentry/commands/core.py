"""``pathsentry replay`` and ``pathsentry schema``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pathsentry.config import load_config

__all__ = ["register"]


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="pathsentry.toml (default: $PATHSENTRY_CONFIG or ./pathsentry.toml)")
    p.add_argument("--geo", action="append", default=[],
                   help="geo source stacked first: a CSV prefix table or an .mmdb (repeatable)")


def cmd_replay(args: argparse.Namespace) -> int:
    from pathsentry.replay import replay, write_outputs

    cfg = load_config(args.config, geo=args.geo)
    res = replay(args.files, cfg)
    fpath, apath = write_outputs(res, args.out)
    print(res.summary())
    print(f"wrote {fpath} and {apath}")
    return 0


def json_schemas() -> dict[str, dict[str, Any]]:
    from pydantic import TypeAdapter

    from pathsentry.schemas import Alert, FlaggedEvent, HttpProbe, Login, RttProbe, Traceroute
    from pathsentry.schemas.events import event_adapter
    from pathsentry.schemas.feedback import AccountLabel, Interaction, feedback_adapter

    out: dict[str, dict[str, Any]] = {
        "event.schema.json": event_adapter.json_schema(),
        "feedback.schema.json": feedback_adapter.json_schema(),
        "alert.schema.json": TypeAdapter(Alert).json_schema(),
        "flagged_event.schema.json": TypeAdapter(FlaggedEvent).json_schema(),
    }
    for model in (Login, RttProbe, Traceroute, HttpProbe, AccountLabel, Interaction):
        kind = model.model_fields["kind"].annotation.__args__[0]  # type: ignore[union-attr]
        out[f"{kind}.schema.json"] = model.model_json_schema()
    return out


def cmd_schema(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
        (out / name).write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        print(out / name)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="run the detectors over JSONL event files in ts order")
    p.add_argument("files", nargs="+", help="JSONL files of contract-v1 events")
    p.add_argument("--out", required=True, help="output directory for flagged.jsonl and alerts.jsonl")
    add_config_args(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("schema", help="write the JSON Schema of the event contract and outputs")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_schema)
