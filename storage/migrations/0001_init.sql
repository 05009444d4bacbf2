-- Initial schema. Timestamps are Unix seconds (REAL); JSON columns hold text checked by json_valid.
-- Runs inside one transaction opened by storage/migrate.py: no BEGIN/COMMIT here.

CREATE TABLE loras (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    owner_id     INTEGER,
    trigger_word TEXT,
    path         TEXT    NOT NULL,
    sha256       TEXT,
    rank         INTEGER CHECK (rank IS NULL OR rank > 0),
    base_model   TEXT,
    status       TEXT    NOT NULL DEFAULT 'ready'
                         CHECK (status IN ('training', 'ready', 'failed')),
    shared       INTEGER NOT NULL DEFAULT 1 CHECK (shared IN (0, 1)),
    created_at   REAL    NOT NULL
);

CREATE TABLE users (
    user_id         INTEGER PRIMARY KEY,          -- Discord user id
    fixed_seed      INTEGER,                      -- NULL: a random seed per generation
    last_seed       INTEGER,
    steps           INTEGER CHECK (steps IS NULL OR steps > 0),   -- NULL: global default
    cfg             REAL    CHECK (cfg IS NULL OR cfg >= 0),
    width           INTEGER CHECK (width IS NULL OR width > 0),
    height          INTEGER CHECK (height IS NULL OR height > 0),
    sampler         TEXT,
    negative_prompt TEXT,
    lora_name       TEXT    REFERENCES loras (name) ON DELETE SET NULL ON UPDATE CASCADE,
    lora_scale      REAL,
    banned          INTEGER NOT NULL DEFAULT 0 CHECK (banned IN (0, 1)),
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL
);
CREATE INDEX users_lora_name ON users (lora_name);

CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL CHECK (kind IN ('generate', 'train')),
    user_id     INTEGER NOT NULL,
    guild_id    INTEGER,
    channel_id  INTEGER,
    reference   TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(reference)),
    payload     TEXT    NOT NULL CHECK (json_valid(payload)),
    priority    INTEGER NOT NULL DEFAULT 0,
    status      TEXT    NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error       TEXT,
    result      TEXT    CHECK (result IS NULL OR json_valid(result)),
    created_at  REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL
);
CREATE INDEX jobs_unfinished ON jobs (id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_user ON jobs (user_id, id);

CREATE TABLE generations (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    user_id         INTEGER NOT NULL,
    prompt          TEXT    NOT NULL,
    negative_prompt TEXT    NOT NULL DEFAULT '',
    steps           INTEGER NOT NULL CHECK (steps > 0),
    cfg             REAL    NOT NULL,
    width           INTEGER NOT NULL CHECK (width > 0),
    height          INTEGER NOT NULL CHECK (height > 0),
    sampler         TEXT    NOT NULL,
    model           TEXT    NOT NULL DEFAULT '',
    lora_name       TEXT,                          -- a copy, kept after the LoRA is deleted
    lora_scale      REAL,
    seeds           TEXT    NOT NULL CHECK (json_valid(seeds)),        -- one per image
    image_paths     TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(image_paths)),
    timings         TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(timings)),
    duration_s      REAL    CHECK (duration_s IS NULL OR duration_s >= 0),
    created_at      REAL    NOT NULL
);
CREATE INDEX generations_job ON generations (job_id);
CREATE INDEX generations_user ON generations (user_id, id);

CREATE TABLE blocked_words (
    word       TEXT PRIMARY KEY COLLATE NOCASE,
    added_by   INTEGER,
    created_at REAL NOT NULL
);

CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL CHECK (json_valid(value)),
    updated_at REAL NOT NULL
);
