"""HTTP API settings (env prefix API_): off by default, bound to this PC unless the owner says so."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from engine.settings_base import SettingsSection


def parse_credentials(text: str) -> dict[str, str]:
    """``user:pass[,user2:pass2]`` as {user: password}; ValueError names the bad entry."""
    users: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, password = entry.partition(":")
        if not sep or not name.strip() or not password:
            shown = name.strip() or "(empty)"
            raise ValueError(f"each entry must be user:password (entry for {shown!r} is not)")
        users[name.strip()] = password
    return users


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this PC only (127.x, ::1 or localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class ApiSettings(SettingsSection):
    """The web-UI compatible HTTP API the bot (or ``python -m engine serve``) may serve."""

    model_config = SettingsConfigDict(env_prefix="API_")

    enabled: bool = Field(False, description="Serve the web-UI HTTP API from the bot too")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every network)")
    port: int = Field(7860, ge=1, le=65535, description="TCP port of the HTTP API")
    auth: SecretStr | None = Field(
        None, description="Credentials user:pass[,user2:pass2]; each is a user of the fair queue"
    )

    @field_validator("auth")
    @classmethod
    def _valid_auth(cls, value: Any) -> Any:
        if value is not None:
            parse_credentials(value.get_secret_value())
        return value

    def credentials(self) -> dict[str, str]:
        """The configured {user: password}; empty when the API is open (no API_AUTH)."""
        return parse_credentials(self.auth.get_secret_value()) if self.auth else {}

    def exposed_without_auth(self) -> bool:
        """Whether the API would listen beyond this PC with no credentials (refused at start)."""
        return not is_loopback(self.host) and not self.credentials()
