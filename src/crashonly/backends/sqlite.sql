-- SQLite dialect of the crashonly queue. Parameters are always bound (named :params).
-- Times are REAL seconds since the epoch (the machine's wall clock, read by the backend under
-- the write lock), but for lease_deadline: seconds of the monotonic clock. Lower priority
-- numbers run first.

-- name: migration_1
CREATE TABLE IF NOT EXISTS crashonly_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS crashonly_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    task             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    payload          TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    deaths           INTEGER NOT NULL DEFAULT 0,
    alone            INTEGER NOT NULL DEFAULT 0,
    lease_seconds    REAL    NOT NULL,
    run_at           REAL    NOT NULL,
    created_at       REAL    NOT NULL,
    lease_expires_at REAL,
    worker           TEXT,
    token            INTEGER NOT NULL DEFAULT 0,
    unique_key       TEXT,
    last_error       TEXT,
    result           TEXT,
    finished_at      REAL
);
CREATE INDEX IF NOT EXISTS crashonly_jobs_claim
    ON crashonly_jobs (queue, priority, run_at, id) WHERE state IN ('ready', 'scheduled');
CREATE INDEX IF NOT EXISTS crashonly_jobs_reserved
    ON crashonly_jobs (lease_expires_at) WHERE state = 'reserved';
CREATE INDEX IF NOT EXISTS crashonly_jobs_done
    ON crashonly_jobs (finished_at) WHERE state = 'done';
CREATE UNIQUE INDEX IF NOT EXISTS crashonly_jobs_unique
    ON crashonly_jobs (unique_key) WHERE unique_key IS NOT NULL AND state <> 'done';
CREATE TABLE IF NOT EXISTS crashonly_workers (
    id           TEXT PRIMARY KEY,
    host         TEXT    NOT NULL,
    boot_id      TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    pid_start    TEXT    NOT NULL,
    started_at   REAL    NOT NULL,
    heartbeat_at REAL    NOT NULL,
    queues       TEXT    NOT NULL,
    concurrency  INTEGER NOT NULL
);

-- name: migration_2
-- Suspects (jobs whose holder died while they shared a claim) are few: a tiny partial index
-- lets the common claim skip the two-step path that takes a suspect alone.
CREATE INDEX IF NOT EXISTS crashonly_jobs_alone ON crashonly_jobs (id) WHERE alone = 1;
-- Recovery looks for due scheduled jobs twice a second in every worker: without this it
-- scanned the whole table, a day of done jobs included.
CREATE INDEX IF NOT EXISTS crashonly_jobs_scheduled ON crashonly_jobs (run_at)
    WHERE state = 'scheduled';

-- name: migration_3
-- Unique keys scoped to the task. A job holds its key while key_held = 1. A done job lets go
-- key_done_for seconds after it finished, a buried one at once unless key_buried = 1: lazily,
-- when an enqueue asks for the key (release_key), since a partial index cannot expire.
ALTER TABLE crashonly_jobs ADD COLUMN key_held INTEGER NOT NULL DEFAULT 0;
ALTER TABLE crashonly_jobs ADD COLUMN key_done_for REAL NOT NULL DEFAULT 0;
ALTER TABLE crashonly_jobs ADD COLUMN key_buried INTEGER NOT NULL DEFAULT 0;
UPDATE crashonly_jobs SET key_held = 1 WHERE unique_key IS NOT NULL AND state <> 'done';
DROP INDEX IF EXISTS crashonly_jobs_unique;
CREATE UNIQUE INDEX IF NOT EXISTS crashonly_jobs_key ON crashonly_jobs (task, unique_key)
    WHERE key_held = 1;
-- Leases are decided on the machine's monotonic clock (immune to wall-clock steps, shared by
-- every process on the machine, whatever its PID namespace): lease_deadline. The wall-clock
-- lease_expires_at stays for people. A row claimed before this migration has no deadline and
-- is judged by lease_expires_at. pid_ns: a pid is judged only inside its own PID namespace.
ALTER TABLE crashonly_jobs ADD COLUMN lease_deadline REAL;
ALTER TABLE crashonly_workers ADD COLUMN pid_ns TEXT NOT NULL DEFAULT '';

-- name: schema_version
SELECT value FROM crashonly_meta WHERE key = 'schema_version';

-- name: set_schema_version
INSERT INTO crashonly_meta (key, value) VALUES ('schema_version', :version)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: has_meta
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'crashonly_meta';

-- name: insert_job
-- Positional parameters (bulk enqueue binds tuples: a third faster than named ones), in order:
-- task, queue, state, priority, payload, max_attempts, lease, run_at, now, unique_key
INSERT INTO crashonly_jobs
    (task, queue, state, priority, payload, max_attempts, lease_seconds, run_at, created_at,
     unique_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: release_key
-- An enqueue wants the key: a done job past its window, or a buried job not asked to keep it,
-- lets go of it now.
UPDATE crashonly_jobs SET key_held = 0
WHERE task = :task AND unique_key = :unique_key AND key_held = 1
  AND ((state = 'done' AND (key_done_for = 0 OR finished_at + key_done_for <= :now))
       OR (state = 'buried' AND key_buried = 0));

-- name: insert_unique_job
INSERT INTO crashonly_jobs
    (task, queue, state, priority, payload, max_attempts, lease_seconds, run_at, created_at,
     unique_key, key_held, key_done_for, key_buried)
VALUES (:task, :queue, :state, :priority, :payload, :max_attempts, :lease, :run_at, :now,
        :unique_key, 1, :key_done_for, :key_buried)
ON CONFLICT (task, unique_key) WHERE key_held = 1 DO NOTHING
RETURNING id;

-- name: find_unique
SELECT id, state FROM crashonly_jobs
WHERE task = :task AND unique_key = :unique_key AND key_held = 1;

-- name: last_id
SELECT last_insert_rowid();

-- name: claim_candidates
-- One queue at a time (``queue = :queue``), so the claim index gives the order and the LIMIT
-- stops the scan; ``queue IN (...)`` would sort every ready job of the queues first.
SELECT priority, run_at, id, alone FROM crashonly_jobs
WHERE state IN ('ready', 'scheduled') AND run_at <= :now AND queue = :queue
ORDER BY priority, run_at, id
LIMIT :limit;

-- name: suspects_waiting
SELECT 1 FROM crashonly_jobs WHERE alone = 1 AND state IN ('ready', 'scheduled') LIMIT 1;

-- name: claim_next
-- The common claim, in one statement (one queue, no suspect waiting). Columns returned: id, task, queue,
-- priority, payload, attempts, max_attempts, deaths, lease_seconds, run_at, created_at,
-- unique_key, last_error (the rest of a reserved job is known: see reserve()).
UPDATE crashonly_jobs
SET state = 'reserved', worker = :worker, token = :token, attempts = attempts + 1,
    lease_expires_at = :now + lease_seconds, lease_deadline = :mono + lease_seconds
WHERE id IN (SELECT id FROM crashonly_jobs
             WHERE state IN ('ready', 'scheduled') AND run_at <= :now
               AND queue = :queue
             ORDER BY priority, run_at, id
             LIMIT :limit)
RETURNING id, task, queue, priority, payload, attempts, max_attempts, deaths, lease_seconds,
          run_at, created_at, unique_key, last_error;

-- name: claim
UPDATE crashonly_jobs
SET state = 'reserved', worker = :worker, token = :token, attempts = attempts + 1, alone = 0,
    lease_expires_at = :now + lease_seconds, lease_deadline = :mono + lease_seconds
WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING id, task, queue, priority, payload, attempts, max_attempts, deaths, lease_seconds,
          run_at, created_at, unique_key, last_error;

-- name: ack_many
-- :acks is a JSON array of [id, token, result] triples; one statement for a whole batch.
UPDATE crashonly_jobs
SET state = 'done', result = a.value ->> 2, finished_at = :now, lease_expires_at = NULL,
    deaths = 0
FROM json_each(:acks) AS a
WHERE crashonly_jobs.id = a.value ->> 0 AND crashonly_jobs.token = a.value ->> 1
  AND crashonly_jobs.state = 'reserved';

-- name: ack
UPDATE crashonly_jobs
SET state = 'done', result = :result, finished_at = :now, lease_expires_at = NULL, deaths = 0
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: release
UPDATE crashonly_jobs
SET state = CASE WHEN :delay > 0 THEN 'scheduled' ELSE 'ready' END,
    run_at = CASE WHEN :delay > 0 THEN :now + :delay ELSE run_at END,
    attempts = attempts - 1, lease_expires_at = NULL, worker = NULL, deaths = 0
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: fail
UPDATE crashonly_jobs
SET state = CASE WHEN attempts >= max_attempts THEN 'buried'
                 WHEN :delay > 0 THEN 'scheduled' ELSE 'ready' END,
    run_at = CASE WHEN attempts >= max_attempts THEN run_at ELSE :now + :delay END,
    finished_at = CASE WHEN attempts >= max_attempts THEN :now END,
    last_error = :error, lease_expires_at = NULL, worker = NULL, deaths = 0
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: bury_reserved
UPDATE crashonly_jobs
SET state = 'buried', last_error = :error, finished_at = :now, lease_expires_at = NULL
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: touch
UPDATE crashonly_jobs
SET lease_expires_at = :now + lease_seconds, lease_deadline = :mono + lease_seconds
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: touch_worker
UPDATE crashonly_jobs
SET lease_expires_at = :now + lease_seconds, lease_deadline = :mono + lease_seconds
WHERE state = 'reserved' AND worker = :worker;

-- name: workers
SELECT id, host, boot_id, pid, pid_start, started_at, heartbeat_at, queues, concurrency, pid_ns
FROM crashonly_workers ORDER BY started_at;

-- name: register_worker
INSERT OR REPLACE INTO crashonly_workers
    (id, host, boot_id, pid, pid_start, started_at, heartbeat_at, queues, concurrency, pid_ns)
VALUES (:id, :host, :boot_id, :pid, :pid_start, :started_at, :heartbeat_at, :queues,
        :concurrency, :pid_ns);

-- name: heartbeat
UPDATE crashonly_workers SET heartbeat_at = :now WHERE id = :id;

-- name: deregister_worker
DELETE FROM crashonly_workers WHERE id = :id;

-- name: orphans_exist
SELECT 1 FROM crashonly_jobs
WHERE state = 'reserved'
  AND (worker IS NULL
       OR worker IN (SELECT value FROM json_each(:dead))
       OR lease_deadline < :mono
       -- A deadline beyond any lease taken since boot was set before a reboot (the monotonic
       -- clock restarted): long expired.
       OR lease_deadline > :mono + lease_seconds + 1
       OR (lease_deadline IS NULL AND lease_expires_at < :now))
LIMIT 1;

-- name: orphans
-- Dead holders are deregistered first (same transaction): a holder still registered is alive.
SELECT id, token, worker, worker IN (SELECT id FROM crashonly_workers), deaths, attempts,
       max_attempts
FROM crashonly_jobs
WHERE state = 'reserved'
  AND (worker IS NULL
       OR worker IN (SELECT value FROM json_each(:dead))
       OR lease_deadline < :mono
       -- A deadline beyond any lease taken since boot was set before a reboot (the monotonic
       -- clock restarted): long expired.
       OR lease_deadline > :mono + lease_seconds + 1
       OR (lease_deadline IS NULL AND lease_expires_at < :now))
ORDER BY worker, token, id;

-- name: requeue_stalled
UPDATE crashonly_jobs
SET state = 'ready', lease_expires_at = NULL, lease_deadline = NULL, worker = NULL,
    last_error = :error
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: requeue_stopped
-- Released as the worker's graceful stop would have: no attempt, no death (it did not die).
UPDATE crashonly_jobs
SET state = 'ready', attempts = attempts - 1, deaths = 0, lease_expires_at = NULL,
    worker = NULL, last_error = :error
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: requeue_blamed
-- The prime suspect: run alone next time too, so a further death is blamed exactly again.
UPDATE crashonly_jobs
SET state = 'ready', deaths = deaths + 1, alone = 1, lease_expires_at = NULL, worker = NULL,
    last_error = :error
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: requeue_unblamed
UPDATE crashonly_jobs
SET state = 'ready', attempts = attempts - 1, alone = 1, lease_expires_at = NULL,
    worker = NULL
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: bury_orphan
UPDATE crashonly_jobs
SET state = 'buried', deaths = deaths + 1, last_error = :error, finished_at = :now,
    lease_expires_at = NULL
WHERE id = :id AND token = :token AND state = 'reserved';

-- name: due_scheduled_exist
SELECT 1 FROM crashonly_jobs
WHERE state = 'scheduled' AND run_at <= :now LIMIT 1;

-- name: promote
UPDATE crashonly_jobs SET state = 'ready' WHERE state = 'scheduled' AND run_at <= :now;

-- name: purge
-- A done job still holding its unique key stays until its window ends.
DELETE FROM crashonly_jobs
WHERE state = 'done' AND finished_at < :before
  AND (key_held = 0 OR finished_at + key_done_for < :now);

-- name: get
-- :payload 0 reads '' instead of the call's arguments (a status poll needs no megabytes).
SELECT id, task, queue, state, priority, CASE WHEN :payload THEN payload ELSE '' END, attempts, max_attempts, deaths,
       lease_seconds, run_at, created_at, lease_expires_at, worker, token, unique_key,
       last_error, result, finished_at
FROM crashonly_jobs WHERE id = :id;

-- name: list
SELECT id, task, queue, state, priority, payload, attempts, max_attempts, deaths,
       lease_seconds, run_at, created_at, lease_expires_at, worker, token, unique_key,
       last_error, result, finished_at
FROM crashonly_jobs
WHERE (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
ORDER BY id DESC
LIMIT :limit;

-- name: stats
SELECT queue, state, count(*) FROM crashonly_jobs GROUP BY queue, state;

-- name: kick
UPDATE crashonly_jobs
SET state = 'ready', attempts = 0, deaths = 0, run_at = :now, finished_at = NULL,
    worker = NULL
WHERE state = 'buried' AND id = :id;

-- name: kick_all
UPDATE crashonly_jobs
SET state = 'ready', attempts = 0, deaths = 0, run_at = :now, finished_at = NULL,
    worker = NULL
WHERE state = 'buried';

-- name: delete
DELETE FROM crashonly_jobs WHERE id = :id;

-- name: bury
UPDATE crashonly_jobs
SET state = 'buried', last_error = :error, finished_at = :now
WHERE id = :id AND state IN ('ready', 'scheduled');
