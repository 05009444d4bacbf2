-- Durable delivery: a job whose work is done but whose result is not yet on Discord is
-- 'finished'; it becomes 'done' once delivered. Failed and cancelled jobs also carry a message
-- to deliver: delivered_at stays NULL until the user has been told.
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt.

CREATE TABLE jobs_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL CHECK (kind IN ('generate', 'train')),
    user_id      INTEGER NOT NULL,
    guild_id     INTEGER,
    channel_id   INTEGER,
    reference    TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(reference)),
    payload      TEXT    NOT NULL CHECK (json_valid(payload)),
    priority     INTEGER NOT NULL DEFAULT 0,
    status       TEXT    NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'running', 'finished', 'done', 'failed',
                                           'cancelled')),
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error        TEXT,
    result       TEXT    CHECK (result IS NULL OR json_valid(result)),
    created_at   REAL    NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    delivered_at REAL
);

INSERT INTO jobs_new (id, kind, user_id, guild_id, channel_id, reference, payload, priority,
                      status, attempts, error, result, created_at, started_at, finished_at,
                      delivered_at)
SELECT id, kind, user_id, guild_id, channel_id, reference, payload, priority, status, attempts,
       error, result, created_at, started_at, finished_at,
       CASE WHEN status IN ('done', 'failed', 'cancelled') THEN finished_at END
FROM jobs;

-- Keep AUTOINCREMENT's high-water mark, so a job id is never reused after the rebuild.
INSERT INTO sqlite_sequence (name, seq)
SELECT 'jobs_new', seq FROM sqlite_sequence WHERE name = 'jobs'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'jobs_new');
UPDATE sqlite_sequence
SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0))
WHERE name = 'jobs_new';

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_unfinished ON jobs (id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_undelivered ON jobs (id)
    WHERE status IN ('finished', 'failed', 'cancelled') AND delivered_at IS NULL;
CREATE INDEX jobs_user ON jobs (user_id, id);

