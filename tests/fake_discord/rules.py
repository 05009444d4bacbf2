"""Discord's limits on a message body (content, embeds, components, uploads) and its error bodies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .recorder import UploadedFile

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
MAX_FIELDS = 25
MAX_ATTACHMENTS = 10
MAX_ROWS = 5
MAX_ROW_ITEMS = 5
MAX_CUSTOM_ID = 100
MAX_LABEL = 80
MAX_NONCE = 25
MAX_SELECT_OPTIONS = 25
SELECT_TYPES = (3, 5, 6, 7, 8)  # string, user, role, mentionable and channel selects
MAX_MODAL_TITLE = 45
MAX_MODAL_LABEL = 45
MAX_TEXT_INPUT = 4000
COMPONENTS_V2_FLAG = 1 << 15
EMBED_TEXT_LIMITS = {"title": 256, "description": 4096}
FIELD_LIMITS = {"name": 256, "value": 1024}


@dataclass
class RuleError:
    """A refusal: the HTTP status and Discord's JSON error body."""

    status: int
    body: dict[str, Any]

    @property
    def code(self) -> int:
        """Discord's JSON error code (``50035``, ``40005``, ...)."""
        return int(self.body.get("code", 0))


@dataclass
class FormErrors:
    """Collects field errors and renders Discord's nested ``errors`` object."""

    prefix: tuple[str, ...] = ()
    found: list[tuple[tuple[str, ...], str, str]] = field(default_factory=list)

    def max_length(self, path: Sequence[str | int], limit: int, what: str = "") -> None:
        """Add Discord's BASE_TYPE_MAX_LENGTH error at ``path``."""
        message = f"Must be {limit} or fewer in length."
        self.add(path, "BASE_TYPE_MAX_LENGTH", message + (f" ({what})" if what else ""))

    def add(self, path: Sequence[str | int], code: str, message: str) -> None:
        """Add an error with Discord's ``code`` string at ``path`` (keys and list indices)."""
        self.found.append(((*self.prefix, *(str(p) for p in path)), code, message))

    def error(self) -> RuleError | None:
        """``400 Invalid Form Body`` (code 50035) with the nested errors, or ``None`` when valid."""
        if not self.found:
            return None
        errors: dict[str, Any] = {}
        for path, code, message in self.found:
            node = errors
            for key in path:
                node = node.setdefault(key, {})
            node.setdefault("_errors", []).append({"code": code, "message": message})
        return RuleError(400, {"message": "Invalid Form Body", "code": 50035, "errors": errors})


def discord_error(status: int, code: int, message: str) -> RuleError:
    """A plain Discord JSON error (``{"message", "code"}``)."""
    return RuleError(status, {"message": message, "code": code})


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _check_embeds(embeds: list[dict[str, Any]], errors: FormErrors) -> None:
    if len(embeds) > MAX_EMBEDS:
        errors.max_length(["embeds"], MAX_EMBEDS)
    total = 0
    for i, embed in enumerate(embeds):
        for key, limit in EMBED_TEXT_LIMITS.items():
            text = _text(embed.get(key))
            total += len(text)
            if len(text) > limit:
                errors.max_length(["embeds", i, key], limit)
        fields = embed.get("fields") or []
        if len(fields) > MAX_FIELDS:
            errors.max_length(["embeds", i, "fields"], MAX_FIELDS)
        for j, item in enumerate(fields):
            for key, limit in FIELD_LIMITS.items():
                text = _text(item.get(key))
                total += len(text)
                if len(text) > limit:
                    errors.max_length(["embeds", i, "fields", j, key], limit)
        for part, key, limit in (("footer", "text", 2048), ("author", "name", 256)):
            text = _text((embed.get(part) or {}).get(key))
            total += len(text)
            if len(text) > limit:
                errors.max_length(["embeds", i, part, key], limit)
    if total > MAX_EMBED_TOTAL:
        errors.add(
            ["embeds"],
            "MAX_EMBED_SIZE_EXCEEDED",
            f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}",
        )


def _check_item(item: dict[str, Any], path: list[str | int], errors: FormErrors) -> None:
    if len(_text(item.get("custom_id"))) > MAX_CUSTOM_ID:
        errors.max_length([*path, "custom_id"], MAX_CUSTOM_ID)
    if len(_text(item.get("label"))) > MAX_LABEL:
        errors.max_length([*path, "label"], MAX_LABEL)


def _check_components(components: list[dict[str, Any]], flags: int, errors: FormErrors) -> None:
    # Components V2 messages have no 5-rows rule (their limit is 40 components in all).
    if not flags & COMPONENTS_V2_FLAG and len(components) > MAX_ROWS:
        errors.max_length(["components"], MAX_ROWS, "action rows")

    def walk(items: list[dict[str, Any]], path: list[str | int]) -> None:
        for i, item in enumerate(items):
            here = [*path, i]
            _check_item(item, here, errors)
            children = item.get("components") or []
            if item.get("type") == 1 and len(children) > MAX_ROW_ITEMS:
                errors.add(
                    [*here, "components"],
                    "BASE_TYPE_BAD_LENGTH",
                    f"Must be between 1 and {MAX_ROW_ITEMS} in length.",
                )
            selects = [c for c in children if c.get("type") in SELECT_TYPES]
            if item.get("type") == 1 and selects and len(children) > 1:
                errors.add(
                    [*here, "components"],
                    "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                    "The specified component exceeds the maximum width",
                )
            if item.get("type") == 3:
                _check_select(item, here, errors)
            walk(children, [*here, "components"])
            if isinstance(item.get("accessory"), dict):
                _check_item(item["accessory"], [*here, "accessory"], errors)

    walk(components, ["components"])


def _check_select(item: dict[str, Any], path: list[str | int], errors: FormErrors) -> None:
    options = item.get("options") or []
    if not 1 <= len(options) <= MAX_SELECT_OPTIONS:
        errors.add(
            [*path, "options"],
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MAX_SELECT_OPTIONS} in length.",
        )
    low, high = int(item.get("min_values", 1)), int(item.get("max_values", 1))
    if not 0 <= low <= high <= min(len(options), MAX_SELECT_OPTIONS):
        errors.add([*path, "max_values"], "BASE_TYPE_BAD_VALUE", "Invalid min/max values.")
    for i, option in enumerate(options):
        for key in ("label", "value"):
            if not 1 <= len(_text(option.get(key))) <= 100:
                errors.max_length([*path, "options", i, key], 100)


def check_modal(payload: dict[str, Any], prefix: tuple[str, ...] = ("data",)) -> RuleError | None:
    """Discord's refusal of a modal (callback type 9) body, or ``None`` when it is accepted."""
    errors = FormErrors(prefix)
    if not 1 <= len(_text(payload.get("title"))) <= MAX_MODAL_TITLE:
        errors.max_length(["title"], MAX_MODAL_TITLE)
    if not 1 <= len(_text(payload.get("custom_id"))) <= MAX_CUSTOM_ID:
        errors.max_length(["custom_id"], MAX_CUSTOM_ID)
    rows = payload.get("components") or []
    if not 1 <= len(rows) <= MAX_ROWS:
        errors.add(["components"], "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MAX_ROWS}.")
    for i, row in enumerate(rows):
        inputs = row.get("components") or ([row["component"]] if row.get("component") else [])
        for j, field_ in enumerate(inputs):
            here: list[str | int] = ["components", i, "components", j]
            if field_.get("type") != 4:
                errors.add(here, "UNION_TYPE_CHOICES", "Modals accept only text inputs here.")
                continue
            _check_item(field_, here, errors)
            if len(_text(field_.get("label"))) > MAX_MODAL_LABEL:
                errors.max_length([*here, "label"], MAX_MODAL_LABEL)
            limit = int(field_.get("max_length") or MAX_TEXT_INPUT)
            if len(_text(field_.get("value"))) > min(limit, MAX_TEXT_INPUT):
                errors.max_length([*here, "value"], min(limit, MAX_TEXT_INPUT))
    return errors.error()


def check_message(
    payload: dict[str, Any],
    files: Sequence[UploadedFile],
    *,
    upload_limit: int,
    prefix: tuple[str, ...] = (),
) -> RuleError | None:
    """Discord's refusal of a message create/edit body, or ``None`` when Discord would accept it.

    ``prefix`` nests the field errors (``("data",)`` for an interaction callback).
    """
    total = sum(len(f.data) for f in files)
    if total > upload_limit:
        return discord_error(413, 40005, "Request entity too large")
    errors = FormErrors(prefix)
    content = payload.get("content")
    if isinstance(content, str) and len(content) > MAX_CONTENT:
        errors.max_length(["content"], MAX_CONTENT)
    _check_embeds(payload.get("embeds") or [], errors)
    _check_components(payload.get("components") or [], int(payload.get("flags") or 0), errors)
    attachments = payload.get("attachments") or []
    if max(len(files), len(attachments)) > MAX_ATTACHMENTS:
        errors.max_length(["attachments"], MAX_ATTACHMENTS)
    nonce = payload.get("nonce")
    if nonce is not None and len(str(nonce)) > MAX_NONCE:
        errors.max_length(["nonce"], MAX_NONCE)
    return errors.error()


@dataclass
class Rejection:
    """A request the fake refused (a 4xx it answered), kept in ``FakeDiscord.rejections``."""

    method: str
    path: str
    status: int
    code: int
    message: str
