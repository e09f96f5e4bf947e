-- PostgreSQL dialect of the crashonly queue. Parameters are always bound (%(name)s).
-- {schema} is the quoted schema identifier, substituted once when the file is loaded (an
-- identifier cannot be bound); the schema name is validated as a plain lowercase identifier.
-- Times are float8 seconds since the epoch on the server's clock: {now} is substituted at load
-- time with the server's clock_timestamp() (read once per statement, an InitPlan), or with
-- %(store_now)s when a test fixes the store's clock. A caller's own times arrive as delays.
-- Lower priority numbers run first.

-- name: migration_1
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task             text    NOT NULL,
    queue            text    NOT NULL,
    state            text    NOT NULL
        CHECK (state IN ('scheduled', 'ready', 'reserved', 'done', 'buried')),
    priority         integer NOT NULL,
    payload          text    NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    deaths           integer NOT NULL DEFAULT 0,
    alone            boolean NOT NULL DEFAULT false,
    lease_seconds    float8  NOT NULL,
    run_at           float8  NOT NULL,
    created_at       float8  NOT NULL,
    lease_expires_at float8,
    worker           text,
    token            bigint  NOT NULL DEFAULT 0,
    unique_key       text,
    last_error       text,
    result           text,
    finished_at      float8
) WITH (fillfactor = 80);
CREATE INDEX IF NOT EXISTS jobs_claim
    ON {schema}.jobs (queue, priority, run_at, id) WHERE state IN ('ready', 'scheduled');
CREATE INDEX IF NOT EXISTS jobs_reserved
    ON {schema}.jobs (lease_expires_at) WHERE state = 'reserved';
CREATE INDEX IF NOT EXISTS jobs_done
    ON {schema}.jobs (finished_at) WHERE state = 'done';
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique
    ON {schema}.jobs (unique_key) WHERE unique_key IS NOT NULL AND state <> 'done';
-- A worker is alive while the session advisory lock on lock_key is held; locked_at (server
-- clock) tells a lock lost to a server restart from one lost to a death.
CREATE TABLE IF NOT EXISTS {schema}.workers (
    id           text PRIMARY KEY,
    host         text        NOT NULL,
    boot_id      text        NOT NULL,
    pid          integer     NOT NULL,
    pid_start    text        NOT NULL,
    started_at   float8      NOT NULL,
    heartbeat_at float8      NOT NULL,
    queues       text        NOT NULL,
    concurrency  integer     NOT NULL,
    lock_key     bigint      NOT NULL,
    locked_at    timestamptz NOT NULL DEFAULT now()
);
-- Wake-ups: whatever makes a job ready (put, release, retry, recovery, kick, promotion)
-- notifies at commit, so an enqueue in a transaction that rolls back wakes nobody.
CREATE OR REPLACE FUNCTION {schema}.notify_ready() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('crashonly_' || TG_TABLE_SCHEMA, q.queue)
    FROM (SELECT DISTINCT queue FROM changed WHERE state = 'ready') AS q;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER jobs_notify_insert
    AFTER INSERT ON {schema}.jobs REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_ready();
CREATE OR REPLACE TRIGGER jobs_notify_update
    AFTER UPDATE ON {schema}.jobs REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_ready();

-- name: migration_2
-- Unique keys scoped to the task. A job holds its key while key_held. A done job lets go
-- key_done_for seconds after it finished, a buried one at once unless key_buried: lazily,
-- when an enqueue asks for the key (release_key), since a partial index cannot expire.
ALTER TABLE {schema}.jobs
    ADD COLUMN IF NOT EXISTS key_held boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS key_done_for float8 NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS key_buried boolean NOT NULL DEFAULT false;
UPDATE {schema}.jobs SET key_held = true WHERE unique_key IS NOT NULL AND state <> 'done';
DROP INDEX IF EXISTS {schema}.jobs_unique;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON {schema}.jobs (task, unique_key) WHERE key_held;
-- pid_ns: a pid is judged only inside its own PID namespace. lock_free_since (server clock):
-- when a worker's lock was first seen free; it is dead only once that lasts (LOCK_GRACE).
ALTER TABLE {schema}.workers ADD COLUMN IF NOT EXISTS pid_ns text NOT NULL DEFAULT '';
ALTER TABLE {schema}.workers ADD COLUMN IF NOT EXISTS lock_free_since timestamptz;

-- name: schema_exists
SELECT to_regclass('{schema}.meta') IS NOT NULL;

-- name: schema_version
SELECT value FROM {schema}.meta WHERE key = 'schema_version';

-- name: set_schema_version
INSERT INTO {schema}.meta (key, value) VALUES ('schema_version', %(version)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: lock_migrations
SELECT pg_advisory_xact_lock(%(key)s);

-- name: insert_jobs
-- Ids come from one sequence in row order, so sorted ids match the input order.
INSERT INTO {schema}.jobs
    (task, queue, state, priority, payload, max_attempts, lease_seconds, run_at, created_at)
SELECT t.task, t.queue, t.state, t.priority, t.payload, t.max_attempts, t.lease,
       {now} + t.delay, {now}
FROM unnest(%(task)s::text[], %(queue)s::text[], %(state)s::text[], %(priority)s::int[],
            %(payload)s::text[], %(max_attempts)s::int[], %(lease)s::float8[],
            %(delay)s::float8[])
     WITH ORDINALITY AS t(task, queue, state, priority, payload, max_attempts, lease, delay, n)
ORDER BY t.n
RETURNING id;

-- name: release_key
-- An enqueue wants the key: a done job past its window, or a buried job not asked to keep it,
-- lets go of it now. (The row lock this takes orders two enqueues racing for the same key.)
UPDATE {schema}.jobs SET key_held = false
WHERE task = %(task)s AND unique_key = %(unique_key)s AND key_held
  AND ((state = 'done' AND (key_done_for = 0 OR finished_at + key_done_for <= {now}))
       OR (state = 'buried' AND NOT key_buried));

-- name: insert_unique_job
INSERT INTO {schema}.jobs
    (task, queue, state, priority, payload, max_attempts, lease_seconds, run_at, created_at,
     unique_key, key_held, key_done_for, key_buried)
VALUES (%(task)s, %(queue)s, %(state)s, %(priority)s, %(payload)s, %(max_attempts)s,
        %(lease)s, {now} + %(delay)s, {now}, %(unique_key)s, true, %(key_done_for)s,
        %(key_buried)s)
ON CONFLICT (task, unique_key) WHERE key_held DO NOTHING
RETURNING id;

-- name: find_unique
SELECT id, state FROM {schema}.jobs
WHERE task = %(task)s AND unique_key = %(unique_key)s AND key_held;

-- name: claim
-- Lock up to :limit candidates, then keep a prefix: a job suspected of killing its last holder
-- (alone) is taken only as the first and only job of a batch, so a later death is its own.
-- :commit is 'off' for a claim alone: it is not worth an fsync, since losing it to a server
-- crash only puts its jobs back to ready, and any later durable commit (a transactional ack)
-- flushes it first. With settlements in its transaction it is 'on'.
WITH cfg AS (
    SELECT set_config('synchronous_commit', %(commit)s, true)
), candidates AS (
    -- One ordered index scan per queue (queue = ANY(...) would sort every ready job).
    SELECT c.id, c.alone, c.priority, c.run_at
    FROM unnest(%(queues)s::text[]) AS q(name),
    LATERAL (
        SELECT id, alone, priority, run_at FROM {schema}.jobs
        WHERE queue = q.name AND state IN ('ready', 'scheduled') AND run_at <= {now}
        ORDER BY priority, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
), ranked AS (
    SELECT id,
           row_number() OVER w AS n,
           count(*) FILTER (WHERE alone) OVER w AS alone_so_far
    FROM candidates
    WINDOW w AS (ORDER BY priority, run_at, id)
)
UPDATE {schema}.jobs AS j
SET state = 'reserved', worker = %(worker)s, token = %(token)s, attempts = j.attempts + 1,
    alone = false, lease_expires_at = {now} + j.lease_seconds
FROM ranked, cfg
WHERE j.id = ranked.id AND ranked.n <= %(limit)s AND (ranked.n = 1 OR ranked.alone_so_far = 0)
RETURNING j.id, j.task, j.queue, j.state, j.priority, j.payload, j.attempts, j.max_attempts,
          j.deaths, j.lease_seconds, j.run_at, j.created_at, j.lease_expires_at, j.worker,
          j.token, j.unique_key, j.last_error, j.result, j.finished_at,
          ranked.alone_so_far > 0 AS suspect;

-- name: settle
-- Acks, releases, failures and burials of a batch in one statement; fenced by the token.
UPDATE {schema}.jobs AS j
SET state = CASE
        WHEN s.kind = 'ack' THEN 'done'
        WHEN s.kind = 'release' AND s.delay > 0 THEN 'scheduled'
        WHEN s.kind = 'release' THEN 'ready'
        WHEN s.kind = 'bury' OR j.attempts >= j.max_attempts THEN 'buried'
        WHEN s.delay > 0 THEN 'scheduled'
        ELSE 'ready' END,
    result = CASE WHEN s.kind = 'ack' THEN s.result ELSE j.result END,
    attempts = CASE WHEN s.kind = 'release' THEN j.attempts - 1 ELSE j.attempts END,
    run_at = CASE WHEN (s.kind = 'fail' AND j.attempts < j.max_attempts)
                       OR (s.kind = 'release' AND s.delay > 0)
                  THEN {now} + s.delay ELSE j.run_at END,
    finished_at = CASE
        WHEN s.kind IN ('ack', 'bury') THEN {now}
        WHEN s.kind = 'release' THEN j.finished_at
        WHEN j.attempts >= j.max_attempts THEN {now} END,
    last_error = CASE WHEN s.kind IN ('fail', 'bury') THEN s.error ELSE j.last_error END,
    worker = CASE WHEN s.kind IN ('release', 'fail') THEN NULL ELSE j.worker END,
    deaths = CASE WHEN s.kind = 'bury' THEN j.deaths ELSE 0 END,
    lease_expires_at = NULL
FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[], %(kinds)s::text[], %(results)s::text[],
            %(errors)s::text[], %(delays)s::float8[])
     AS s(id, token, kind, result, error, delay)
WHERE j.id = s.id AND j.token = s.token AND j.state = 'reserved'
RETURNING j.id;

-- name: ack
UPDATE {schema}.jobs
SET state = 'done', result = %(result)s, finished_at = {now}, lease_expires_at = NULL,
    deaths = 0
WHERE id = %(id)s AND token = %(token)s AND state = 'reserved';

-- name: touch
-- Not worth an fsync either: a lease extension lost to a server crash only lets the job be
-- handed out again, and the token fences the old holder.
WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true))
UPDATE {schema}.jobs AS j SET lease_expires_at = {now} + j.lease_seconds
FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[]) AS s(id, token), cfg
WHERE j.id = s.id AND j.token = s.token AND j.state = 'reserved'
RETURNING j.id;

-- name: touch_worker
WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true))
UPDATE {schema}.jobs AS j SET lease_expires_at = {now} + j.lease_seconds
FROM cfg
WHERE j.state = 'reserved' AND j.worker = %(worker)s;

-- name: workers
SELECT id, host, pid, started_at, heartbeat_at, queues, concurrency, boot_id, pid_start, pid_ns
FROM {schema}.workers ORDER BY started_at, id;

-- name: register_worker
INSERT INTO {schema}.workers
    (id, host, boot_id, pid, pid_start, pid_ns, started_at, heartbeat_at, queues, concurrency,
     lock_key, locked_at, lock_free_since)
VALUES (%(id)s, %(host)s, %(boot_id)s, %(pid)s, %(pid_start)s, %(pid_ns)s, %(started_at)s,
        {now}, %(queues)s, %(concurrency)s, %(lock_key)s, now(), NULL)
ON CONFLICT (id) DO UPDATE
SET host = excluded.host, boot_id = excluded.boot_id, pid = excluded.pid,
    pid_start = excluded.pid_start, pid_ns = excluded.pid_ns, started_at = excluded.started_at,
    heartbeat_at = excluded.heartbeat_at, queues = excluded.queues,
    concurrency = excluded.concurrency, lock_key = excluded.lock_key, locked_at = now(),
    lock_free_since = NULL;

-- name: take_worker_lock
SELECT pg_advisory_lock(%(key)s);

-- name: heartbeat
UPDATE {schema}.workers SET heartbeat_at = {now} WHERE id = %(id)s;

-- name: deregister_worker
DELETE FROM {schema}.workers WHERE id = %(id)s;

-- name: terminate
SELECT pg_terminate_backend(%(pid)s, 5000);

-- name: lock_recovery
SELECT pg_try_advisory_xact_lock(%(key)s);

-- name: free_worker_locks
-- Workers whose lock nobody holds (trying it ourselves is the test, and holding it to commit
-- keeps a reconnecting worker from re-registering halfway through), with how long it has been
-- seen free. A free lock alone is not a death: the worker's session may have been ended (an
-- admin, a pooler, a failover) while the process lives and is about to take it again. A lock
-- that predates the server's start was lost to the restart: its worker gets :grace seconds to
-- reconnect before its lock is even looked at, and is dead if it is still free after that.
UPDATE {schema}.workers
SET lock_free_since = coalesce(lock_free_since, clock_timestamp())
WHERE CASE WHEN locked_at > pg_postmaster_start_time()
             OR clock_timestamp() > pg_postmaster_start_time() + make_interval(secs => %(grace)s)
           THEN pg_try_advisory_xact_lock(lock_key)
           ELSE false END
RETURNING id, host, pid, boot_id, pid_start, pid_ns,
          extract(epoch from clock_timestamp() - lock_free_since)::float8,
          locked_at <= pg_postmaster_start_time();

-- name: delete_workers
DELETE FROM {schema}.workers WHERE id = ANY(%(ids)s);

-- name: orphans
-- Dead holders are deleted first (same transaction): a holder still registered is alive.
SELECT j.id, j.token, j.worker,
       EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = j.worker),
       j.deaths, j.attempts, j.max_attempts
FROM {schema}.jobs AS j
WHERE j.state = 'reserved'
  AND (j.lease_expires_at < {now}
       OR j.worker IS NULL
       OR j.worker = ANY(%(dead)s))
ORDER BY j.worker, j.token, j.id
FOR UPDATE OF j SKIP LOCKED;

-- name: requeue_stalled
UPDATE {schema}.jobs
SET state = 'ready', lease_expires_at = NULL, worker = NULL, last_error = %(error)s
WHERE id = %(id)s AND token = %(token)s AND state = 'reserved';

-- name: requeue_unblamed
UPDATE {schema}.jobs
SET state = 'ready', attempts = attempts - 1, alone = true, lease_expires_at = NULL,
    worker = NULL
WHERE id = %(id)s AND token = %(token)s AND state = 'reserved';

-- name: requeue_blamed
-- The prime suspect: run alone next time too, so a further death is blamed exactly again.
UPDATE {schema}.jobs
SET state = 'ready', deaths = deaths + 1, alone = true, lease_expires_at = NULL, worker = NULL,
    last_error = %(error)s
WHERE id = %(id)s AND token = %(token)s AND state = 'reserved';

-- name: bury_orphan
UPDATE {schema}.jobs
SET state = 'buried', deaths = deaths + 1, last_error = %(error)s, finished_at = {now},
    lease_expires_at = NULL
WHERE id = %(id)s AND token = %(token)s AND state = 'reserved';

-- name: promote
UPDATE {schema}.jobs SET state = 'ready'
WHERE state = 'scheduled' AND run_at <= {now};

-- name: purge
-- A done job still holding its unique key stays until its window ends.
DELETE FROM {schema}.jobs
WHERE state = 'done' AND finished_at < {now} - %(retention)s
  AND (NOT key_held OR finished_at + key_done_for < {now});

-- name: get
-- payload false reads '' instead of the call's arguments (a status poll needs no megabytes).
SELECT id, task, queue, state, priority, CASE WHEN %(payload)s THEN payload ELSE '' END, attempts, max_attempts, deaths,
       lease_seconds, run_at, created_at, lease_expires_at, worker, token, unique_key,
       last_error, result, finished_at
FROM {schema}.jobs WHERE id = %(id)s;

-- name: list
SELECT id, task, queue, state, priority, payload, attempts, max_attempts, deaths,
       lease_seconds, run_at, created_at, lease_expires_at, worker, token, unique_key,
       last_error, result, finished_at
FROM {schema}.jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: stats
SELECT queue, state, count(*) FROM {schema}.jobs GROUP BY queue, state;

-- name: kick
UPDATE {schema}.jobs
SET state = 'ready', attempts = 0, deaths = 0, run_at = {now}, finished_at = NULL,
    worker = NULL
WHERE state = 'buried' AND id = ANY(%(ids)s);

-- name: kick_all
UPDATE {schema}.jobs
SET state = 'ready', attempts = 0, deaths = 0, run_at = {now}, finished_at = NULL,
    worker = NULL
WHERE state = 'buried';

-- name: delete
DELETE FROM {schema}.jobs WHERE id = %(id)s;

-- name: bury
UPDATE {schema}.jobs
SET state = 'buried', last_error = %(error)s, finished_at = {now}
WHERE id = %(id)s AND state IN ('ready', 'scheduled');
