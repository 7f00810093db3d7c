"""Structured (JSON lines) logging for the worker: ``pathsentry worker --log-format json``.

>>> import logging, json
>>> rec = logging.LogRecord("pathsentry.streams.app", logging.WARNING, "app.py", 1,
...                         "dead-letter: %s", ("bad_json",), None)
>>> doc = json.loads(JsonFormatter().format(rec))
>>> doc["level"], doc["logger"], doc["msg"]
('WARNING', 'pathsentry.streams.app', 'dead-letter: bad_json')
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "logging_config"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, process, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def logging_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` that writes JSON lines to stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"level": level.upper(), "handlers": ["json"]},
    }
