"""Moderation lists kept in the database: words that prompts may not contain."""

from __future__ import annotations

import logging
import re
import time

from storage.db import Database

log = logging.getLogger(__name__)

MAX_WORD_LENGTH = 100


def normalize_word(word: str) -> str:
    """The stored form of a blocked word or phrase: trimmed, inner spaces collapsed, lower case."""
    text = " ".join(str(word).split()).casefold()
    if not text:
        raise ValueError("a blocked word must not be empty")
    if len(text) > MAX_WORD_LENGTH:
        raise ValueError(f"a blocked word may have at most {MAX_WORD_LENGTH} characters")
    return text


class BlockedWordsRepo:
    """The ``blocked_words`` table: add, remove, list, and find blocked words in a prompt."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_blocked_word(self, word: str, *, added_by: int | None = None) -> bool:
        """Block a word or phrase; False if it was already blocked."""
        result = await self._db.execute(
            "INSERT INTO blocked_words (word, added_by, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (word) DO NOTHING",
            (normalize_word(word), added_by, time.time()),
        )
        return result.rowcount > 0

    async def remove_blocked_word(self, word: str) -> bool:
        """Unblock a word or phrase; False if it was not blocked."""
        result = await self._db.execute(
            "DELETE FROM blocked_words WHERE word = ?", (normalize_word(word),)
        )
        return result.rowcount > 0

    async def list_blocked_words(self) -> list[str]:
        """All blocked words, sorted."""
        rows = await self._db.fetchall("SELECT word FROM blocked_words ORDER BY word")
        return [str(r["word"]) for r in rows]

    async def find_blocked_words(self, text: str) -> list[str]:
        """The blocked words that occur in ``text`` as whole words (any letter case)."""
        folded = " ".join(text.split()).casefold()
        return [
            word
            for word in await self.list_blocked_words()
            if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", folded)
        ]
