"""Structured JSON logs carrying the request id of whatever is being served."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# uvicorn adds an ANSI-coloured copy of each message; JSON logs do not want it.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", *, json_format: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    route_library_loggers()


def route_library_loggers() -> None:
    """uvicorn, arq and the massive SDK install their own handlers; route all through ours.

    Call again after importing a library that adds handlers at import time (massive).
    """
    for name in (
        "uvicorn",
        "uvicorn.error",
        "uvicorn.access",
        "arq",
        "RESTClient",
        "WebSocketClient",
    ):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
