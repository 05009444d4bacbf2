"""Secrets never reach the log: every logger (libraries included), every level, tracebacks too.

discord.py logs webhook URLs and, at DEBUG, whole gateway events (an interaction's ``token``
field); aiosqlite logs each statement's parameters at DEBUG (a job's reference holds its
interaction token). Redaction happens in the LogRecord factory, so it covers every handler,
including ones added later (pytest's, a user's), and records on loggers that do not propagate.
Records are only built when their level is enabled, so the cost is paid at DEBUG only.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

MASK = "<redacted>"
# Discord interaction tokens are base64 of "interaction:<id>:<secret>".
INTERACTION_PREFIX = "aW50ZXJhY3Rpb246"
# /webhooks/<application id>/<token> and /interactions/<interaction id>/<token>/callback
# (discord.py percent-quotes path parameters, hence % and +).
_URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.\-%+=]{20,}")
_INTERACTION_TOKEN = re.compile(INTERACTION_PREFIX + r"[A-Za-z0-9_\-+=%]*")
# A bot token: base64 of the bot's user id, a timestamp, an HMAC (dot-separated).
_BOT_TOKEN = re.compile(r"(?<![\w-])[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}")
# Its middle part, found by a fast literal scan for "." before the full pattern runs.
_BOT_TOKEN_MIDDLE = re.compile(r"\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27}")
# A field named like a secret, in JSON, a Python repr, a header, a query string or key=value:
# "token": "...", 'password': '...', \"token\": \"...\", Authorization: Bot ..., ?token=...
# The value is kept out whether it is quoted (up to the closing quote) or bare (up to a stop).
_KEYS = ("token", "password", "passwd", "secret", "authorization", "api_key", "apikey")
_FIELD = re.compile(
    # The lookbehind lets access_token or bot-token match at "token" but not "xtoken"; the
    # leading class lets the regex engine skip most positions fast (halves a gateway event).
    r"(?=[tpsa])(?P<key>(?<![A-Za-z0-9])(?:token|passw(?:or)?d|secret|authorization|api_?key))"
    r"(?![A-Za-z0-9])(?P<sep>\\?[\"']?\s*[:=]\s*)"
    r"(?:(?P<quote>\\?[\"'])(?P<qscheme>(?:Bot|Basic|Bearer)\s+)?(?:(?!(?P=quote)).)*(?P=quote)"
    r"|(?P<scheme>(?:Bot|Basic|Bearer)\s+)?[^\s\"'\\,;&})\]]+)",
    re.IGNORECASE,
)
# https://user:password@host
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")

_secrets: tuple[str, ...] = ()
_installed = False
MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary words all over the log


def register_secret(value: str | None) -> bool:
    """Redact ``value`` wherever it appears in the log from now on (the bot token, a password).

    Returns False (and registers nothing) for an empty value or one under MIN_SECRET_LENGTH.
    """
    global _secrets
    value = (value or "").strip()
    if len(value) < MIN_SECRET_LENGTH:
        return False
    if value not in _secrets:
        # Longest first, so a secret that contains another is masked whole.
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))
    return True


def _field(match: re.Match[str]) -> str:
    quote = match["quote"]
    if quote:
        return f"{match['key']}{match['sep']}{quote}{match['qscheme'] or ''}{MASK}{quote}"
    return f"{match['key']}{match['sep']}{match['scheme'] or ''}{MASK}"


def redact(text: str) -> str:
    """The text with every token, password or registered secret in it replaced by a mask."""
    # Cheap substring tests first: most records hold none of these and skip the regexes.
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if INTERACTION_PREFIX in text:
        text = _INTERACTION_TOKEN.sub(MASK, text)
    if "/webhooks/" in text or "/interactions/" in text:
        text = _URL_TOKEN.sub(rf"\1{MASK}", text)
    lower = text.lower()
    if any(key in lower for key in _KEYS):
        text = _FIELD.sub(_field, text)
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    if _BOT_TOKEN_MIDDLE.search(text):
        text = _BOT_TOKEN.sub(MASK, text)
    return text


def _clean(record: logging.LogRecord) -> None:
    """Redact a record in place: its message, its traceback and its stack."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is the logging module's problem, not ours
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, ()
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact(text)
        if record.exc_text != text:
            # Handlers that format exc_info themselves would bring the secret back; the standard
            # Formatter prints exc_text when exc_info is gone.
            record.exc_info = None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_token_redaction() -> None:
    """Redact secrets in every log record from now on (idempotent; covers tracebacks too)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _clean(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
