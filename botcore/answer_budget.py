"""Every interaction is answered within Discord's 3 seconds, whatever the database does.

The tasks discord.py starts for an interaction (the command, button or modal handler and the
error handler after it) get a time budget for database waits, counted from the interaction's
arrival: a write that cannot get the database in time raises DatabaseLockedError, which the
error handler (or /imagine) turns into words. Work they hand to other tasks is not bounded.
"""

from __future__ import annotations

from typing import Any

import discord

from storage.busy import budget_for_new_tasks

# Discord drops a first answer later than 3 s; what is left covers one last try and the HTTP call.
ANSWER_BUDGET_S = 2.5


def install_answer_budget(client: discord.Client, seconds: float = ANSWER_BUDGET_S) -> None:
    """Give the handler tasks of every incoming interaction ``seconds`` for database waits."""
    # discord.py starts an interaction's tasks while it parses INTERACTION_CREATE and has no
    # public hook before that; the gateway reads this same parsers dict.
    parsers: dict[str, Any] = client._connection.parsers
    parse = parsers["INTERACTION_CREATE"]

    def parse_within_budget(data: Any) -> None:
        with budget_for_new_tasks(seconds):
            parse(data)

    parsers["INTERACTION_CREATE"] = parse_within_budget
