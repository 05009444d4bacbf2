"""Interaction and webhook tokens never reach the log, at any level (discord.py logs URLs)."""

from __future__ import annotations

import logging
import re
from typing import Any

# /webhooks/<application id>/<token> and /interactions/<interaction id>/<token>/callback
_URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.\-]{20,}")
_installed = False


def redact(text: str) -> str:
    """The text with every interaction or webhook token in a URL replaced by ``<token>``."""
    return _URL_TOKEN.sub(r"\1<token>", text)


def install_token_redaction() -> None:
    """Redact tokens in every log record from now on (idempotent; covers tracebacks too)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's problem, not ours
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(formatter.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
