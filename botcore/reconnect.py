"""Reconnecting to Discord's gateway: discord.py's backoff between tries, capped.

discord.py waits a random 0..2**n seconds before its n-th reconnect try (n up to 10, so up
to 17 minutes) and forgets n only after 34 minutes without a failure. After a long network
outage, or a few short ones within half an hour, the bot stayed deaf to commands for
minutes after Discord was reachable again (the soak saw 24 s after its third 2-second
outage). Capped, it tries again at least every ``RECONNECT_MAX_S`` seconds; results keep
going out over REST meanwhile either way.
"""

from __future__ import annotations

import discord.client
from discord.backoff import ExponentialBackoff

RECONNECT_MAX_S = 30.0


class CappedBackoff(ExponentialBackoff):
    """discord.py's exponential backoff, never longer than ``RECONNECT_MAX_S``."""

    def delay(self) -> float:  # type: ignore[override]
        """The next wait in seconds."""
        return min(float(super().delay()), RECONNECT_MAX_S)


def cap_reconnect_backoff() -> None:
    """Make discord.py's ``Client.connect`` wait at most ``RECONNECT_MAX_S`` between tries."""
    discord.client.ExponentialBackoff = CappedBackoff  # type: ignore[misc]
