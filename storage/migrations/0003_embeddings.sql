-- Textual-inversion embeddings added by admins (/embedding add); loaded at start-up and used by
-- writing their name in a prompt.

CREATE TABLE embeddings (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    path       TEXT    NOT NULL,
    owner_id   INTEGER,
    vectors    INTEGER NOT NULL CHECK (vectors > 0),
    width      INTEGER NOT NULL CHECK (width > 0),
    sha256     TEXT,
    base_model TEXT,
    created_at REAL    NOT NULL
);
