"""Logging: JSON lines in production (the runbook's fields), readable lines otherwise."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

from aicq.settings import Settings

# Fields a record may carry through ``extra=`` that belong in the JSON line.
_EXTRA = ("event", "method", "path", "status", "latency", "request_id", "ip", "agent",
          "endpoint", "violations", "room", "session", "code")


class JSONFormatter(logging.Formatter):
    def __init__(self, settings: Settings):
        super().__init__()
        self.base = {"service": "aicq", "region": settings.region, "instance": settings.instance}

    def format(self, record: logging.LogRecord) -> str:
        line = {"level": record.levelname.lower(), **self.base}
        for name in _EXTRA:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        line["time"] = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class ReadableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{name}={getattr(record, name)}" for name in _EXTRA if getattr(record, name, None) is not None
        )
        text = f"{datetime.now().strftime('%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        text = f"{text}  {extras}" if extras else text
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _quiet_client_errors(record: logging.LogRecord) -> bool:
    """A client's invalid UTF-8 is its mistake, not ours: one line, no traceback.

    uvicorn logs it as an ERROR with a traceback before closing with 1007, which lets
    any client flood the error log.
    """
    if record.getMessage().startswith("Invalid UTF-8 sequence received from client"):
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args, record.exc_info, record.exc_text = (
            "closed a WebSocket with 1007: invalid UTF-8 from the client", None, None, None)
    return True


def configure(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter(settings) if settings.production else ReadableFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.getLevelName(settings.log_level.upper())
    # Other libraries speak at WARNING and above unless LOG_LEVEL=debug: their INFO
    # (initdb's output, pg_ctl's arguments, uvicorn's start-up lines) buries ours.
    root.setLevel(level if level == logging.DEBUG else max(logging.WARNING, level))
    logging.getLogger("aicq").setLevel(level)
    # uvicorn's own access log would duplicate ours.
    logging.getLogger("uvicorn.access").disabled = True
    # At DEBUG the websockets library logs every frame it parses, room keys and
    # private-room text included: its logger never goes below INFO.
    protocol_log = logging.getLogger("uvicorn.error")
    protocol_log.setLevel(max(logging.INFO, root.level))
    protocol_log.addFilter(_quiet_client_errors)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
