"""Logs on stderr: JSON lines for machines, plain text for people.

Text lines read ``HH:MM:SS LEVEL logger: message key=value ...``: the message once, then only
the fields it does not already say. Colour (the level name) only when stderr is a terminal,
so a redirected log never carries escape codes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
_COLORS = {"DEBUG": "2", "INFO": "36", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


def _value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


def _said(value: Any, message: str) -> bool:
    """Whether the message already carries this field's value (short values such as 0 or
    "dns" are always shown: finding them inside the message would be chance)."""
    text = str(value)
    return len(text) >= 8 and text in message


class TextFormatter(logging.Formatter):
    """One line per record; the structured fields follow as key=value, except those whose
    value the message already contains (no "cannot start: X error=X")."""

    def __init__(self, color: bool = False) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        level = record.levelname
        if self.color:
            level = f"\033[{_COLORS.get(level, '0')}m{level}\033[0m"
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(
            f"{k}={_value(v)}" for k, v in _extras(record).items() if not _said(v, message)
        )
        line = f"{stamp} {level} {record.name}: {message}"
        if fields:
            line += f" {fields}"
        if record.exc_info:
            # A bug report: keep it, but as one indented block under its line.
            line += "\n" + self.formatException(record.exc_info).replace("\n", "\n    ")
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info", json_format: bool = True, color: bool = False) -> None:
    """Log to stderr; ``color`` only applies to text and only makes sense on a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(color=color))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
