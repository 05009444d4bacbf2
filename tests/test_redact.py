"""redact() masks each form a secret takes in a log line, and the record factory applies it."""

from __future__ import annotations

import functools
import json
import logging
import sqlite3

import pytest

from botcore import redact as redaction
from botcore.redact import MASK, install_token_redaction, redact, register_secret
from tests.fake_discord.server import bot_token, interaction_token

INTERACTION = interaction_token(1191168914357223455)
BOT = bot_token(1191168914231394305)


@pytest.fixture(autouse=True)
def _no_registered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test registers its own secrets; none leak into other tests' logs."""
    monkeypatch.setattr(redaction, "_secrets", ())


def test_fake_discord_tokens_have_discords_shapes() -> None:
    assert INTERACTION.startswith("aW50ZXJhY3Rpb246") and len(INTERACTION) > 150
    middle, last = BOT.split(".")[1:]
    assert len(BOT.split(".")[0]) >= 23 and len(middle) == 6 and len(last) >= 27


@pytest.mark.parametrize(
    "line",
    [
        "PATCH https://discord.com/api/v10/webhooks/1191168914231394305/{t}/messages/%40original",
        "POST https://discord.com/api/v10/interactions/1191168914357223455/{t}/callback",
    ],
)
def test_url_tokens(line: str) -> None:
    token = "gvUjVO60m-m66dbQ8hhvCMaknG-qp8nK%2Bx"  # not the interaction shape: the URL says it
    cleaned = redact(line.format(t=token))
    assert token not in cleaned and "gvUj" not in cleaned and MASK in cleaned
    assert cleaned.endswith(("/messages/%40original", "/callback"))


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ('{"app_id": 1, "token": "s3cr3t-value", "created": 2}', '"token": "<redacted>"'),
        ("{'id': '5', 'token': 's3cr3t-value', 'version': 1}", "'token': '<redacted>'"),
        ('\'{"app_id":1,"token":"s3cr3t-value","created":2}\'', '"token":"<redacted>"'),
        ('{\\"token\\": \\"s3cr3t-value\\"}', '{\\"token\\": \\"<redacted>\\"}'),
        ('{"access_token": "s3cr3t-value", "x": 1}', '"access_token": "<redacted>"'),
        ('{"password": "correct horse s3cr3t-value"}', '"password": "<redacted>"'),
        ("GET /callback?code=1&token=s3cr3t-value&state=2", "token=<redacted>&state=2"),
        ("login(user='ann', password='s3cr3t-value')", "password='<redacted>')"),
        ("Authorization: Bot s3cr3t-value\r\nUser-Agent: x", "Authorization: Bot <redacted>\r\n"),
        ("{'Authorization': 'Basic s3cr3t-value'}", "'Authorization': 'Basic <redacted>'"),
        ("authorization=Bearer s3cr3t-value", "authorization=Bearer <redacted>"),
    ],
)
def test_fields_named_like_secrets(line: str, kept: str) -> None:
    cleaned = redact(line)
    assert "s3cr3t" not in cleaned and kept in cleaned


def test_interaction_token_by_shape_anywhere() -> None:
    line = f"reference {INTERACTION} then more"
    assert redact(line) == f"reference {MASK} then more"


def test_bot_token_by_shape_and_by_value() -> None:
    assert redact(f"identify with {BOT}!") == f"identify with {MASK}!"
    odd = "fake-bot-token-of-no-known-shape"
    assert redact(f"login {odd}") == f"login {odd}"
    assert register_secret(odd)
    assert redact(f"login {odd} and again {odd}") == f"login {MASK} and again {MASK}"


def test_registered_secret_by_value() -> None:
    assert not register_secret("") and not register_secret(None) and not register_secret("abc")
    assert register_secret("hunter2-longer") and register_secret("hunter2")
    assert redact("tried hunter2-longer, then hunter2") == f"tried {MASK}, then {MASK}"


def test_url_user_password() -> None:
    cleaned = redact("fetching http://ann:pa55word@127.0.0.1:8080/api/jobs")
    assert cleaned == f"fetching http://ann:{MASK}@127.0.0.1:8080/api/jobs"


@pytest.mark.parametrize(
    "line",
    [
        "Prompts are encoded in 75-token windows; tokens: 77",
        "logging in using static token",
        "embedding <cat-toy> is not loaded on sd15: size mismatch",
        "Dispatching event job_event",
        "model v1-5-pruned-emaonly.safetensors at /models/sd.ckpt",
    ],
)
def test_ordinary_lines_stay(line: str) -> None:
    assert redact(line) == line


@pytest.fixture
def captured() -> list[logging.LogRecord]:
    """Records of the logger 'redact-test' at DEBUG, with redaction installed."""
    install_token_redaction()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("redact-test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def test_factory_cleans_args_as_aiosqlite_logs_them(captured: list[logging.LogRecord]) -> None:
    reference = json.dumps({"app_id": 1, "token": "plain-but-secret-value", "created": 2.0})
    call = functools.partial(
        sqlite3.connect(":memory:").execute, "INSERT INTO jobs VALUES (?, ?)", ("x", reference)
    )
    logging.getLogger("redact-test").debug("executing %s", call)
    (record,) = captured
    assert "plain-but-secret-value" not in record.getMessage() and record.args == ()
    assert "INSERT INTO jobs" in record.getMessage()


def test_factory_cleans_tracebacks_and_stacks(captured: list[logging.LogRecord]) -> None:
    logger = logging.getLogger("redact-test")
    try:
        raise RuntimeError(f"webhook failed for {INTERACTION}")
    except RuntimeError:
        logger.exception("delivery failed", stack_info=True)
    (record,) = captured
    text = logging.Formatter().format(record)
    assert INTERACTION not in text and record.exc_info is None  # no raw exception to re-format
    assert "RuntimeError: webhook failed for <redacted>" in text and "Stack (most recent" in text
    logger.warning("fine %s", "words")  # untouched records keep their args for structured handlers
    assert captured[-1].args == ("words",)
