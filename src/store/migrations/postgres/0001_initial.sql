-- The PostgreSQL store: the same rows as the SQLite store (src/store/migrations/sqlite),
-- so both implement one contract (src/store/contract_tests.rs).
--
-- Times are epoch milliseconds (BIGINT), as in SQLite. JSON columns are TEXT holding the
-- JSON serde_json wrote: JSONB would reorder object keys (agentd keeps the caller's order)
-- and refuses "\u0000" inside strings, and the store never looks inside them. A later
-- query into them can cast (`additional_input::jsonb`) or add an expression index.

CREATE TABLE tasks (
    task_id           TEXT PRIMARY KEY,
    input             TEXT NOT NULL,
    additional_input  TEXT NOT NULL DEFAULT '{}',
    status            TEXT NOT NULL
        CHECK (status IN ('created', 'running', 'completed', 'failed', 'stopped')),
    origin            TEXT NOT NULL,            -- trae|agent_protocol: which API created it
    run_spec          TEXT,                     -- JSON: working_dir, provider, model, ... (Trae runs)
    created_at        BIGINT NOT NULL,
    modified_at       BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    result            TEXT,
    error             TEXT,
    input_tokens      BIGINT NOT NULL DEFAULT 0,
    output_tokens     BIGINT NOT NULL DEFAULT 0,
    cost_usd          DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- The seq of the task's last event: the per-task counter of its log. Every append
    -- advances it in the append's transaction (and checks that the new events follow it),
    -- so the row lock orders the writers of one task: commit order is seq order, with no
    -- gap and no duplicate. Writers on several nodes can reserve seqs with
    -- `UPDATE tasks SET last_seq = last_seq + $n WHERE task_id = $1 RETURNING last_seq`.
    last_seq          BIGINT NOT NULL DEFAULT 0
);
-- Listing order; the page subquery reads only these indexes (task_id is in them).
CREATE INDEX tasks_by_created ON tasks (created_at, task_id);
CREATE INDEX tasks_by_status ON tasks (status, created_at, task_id);

CREATE TABLE steps (
    step_id            TEXT PRIMARY KEY,
    task_id            TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    number             BIGINT NOT NULL,         -- 1, 2, ... within the task
    name               TEXT NOT NULL DEFAULT '',
    status             TEXT NOT NULL,           -- created|running|completed (Agent Protocol)
    state              TEXT NOT NULL,           -- completed|failed|stopped|running: the outcome
    input              TEXT NOT NULL DEFAULT '',
    additional_input   TEXT NOT NULL DEFAULT '{}',
    output             TEXT NOT NULL DEFAULT '',
    additional_output  TEXT NOT NULL DEFAULT '{}',
    is_last            BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         BIGINT NOT NULL,
    UNIQUE (task_id, number)
);

CREATE TABLE artifacts (
    artifact_id    TEXT PRIMARY KEY,
    task_id        TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    step_id        TEXT REFERENCES steps (step_id) ON DELETE SET NULL,
    file_name      TEXT NOT NULL,
    relative_path  TEXT NOT NULL DEFAULT '',    -- as given by the client (directory or full path)
    location       TEXT NOT NULL,               -- path of the file inside the task workspace
    file_size      BIGINT NOT NULL,
    agent_created  BOOLEAN NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (task_id, location)
);
CREATE INDEX artifacts_by_task ON artifacts (task_id, created_at);
-- Foreign keys are not indexed by PostgreSQL itself: ON DELETE SET NULL of a step scans
-- for its artifacts without this.
CREATE INDEX artifacts_by_step ON artifacts (step_id) WHERE step_id IS NOT NULL;

-- Every step that created or changed an artifact (an artifact keeps its id when a later
-- step changes the file at its location; each step still lists what it touched).
CREATE TABLE step_artifacts (
    step_id      TEXT NOT NULL REFERENCES steps (step_id) ON DELETE CASCADE,
    artifact_id  TEXT NOT NULL REFERENCES artifacts (artifact_id) ON DELETE CASCADE,
    PRIMARY KEY (step_id, artifact_id)
);
CREATE INDEX step_artifacts_by_artifact ON step_artifacts (artifact_id);

-- The per-task event log: seq is 1, 2, 3, ... per task (tasks.last_seq is the last).
CREATE TABLE events (
    task_id    TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    type       TEXT NOT NULL,
    timestamp  BIGINT NOT NULL,
    body       TEXT NOT NULL,                   -- JSON: message, result, error, data
    PRIMARY KEY (task_id, seq)
);

-- Task counts and usage sums per status, kept by a trigger in the transaction of every
-- change to `tasks`, so listings and /ap/v1/agent/status read a few rows rather than
-- scanning every task. Each status has 16 slots and a write changes the slot of its
-- connection's backend: a row of one counter per status would be locked by every writer
-- until its commit (the fsync), serialising all task writes of every node. Only the sum
-- over a status's slots means anything (a slot alone may even be negative).
CREATE TABLE task_counts (
    status         TEXT NOT NULL,
    slot           SMALLINT NOT NULL,
    n              BIGINT NOT NULL DEFAULT 0,
    input_tokens   BIGINT NOT NULL DEFAULT 0,
    output_tokens  BIGINT NOT NULL DEFAULT 0,
    cost_usd       DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (status, slot)
);
INSERT INTO task_counts (status, slot)
SELECT status, slot
FROM unnest(ARRAY['created', 'running', 'completed', 'failed', 'stopped']) AS status,
     generate_series(0, 15) AS slot;

CREATE FUNCTION task_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- A backend runs one transaction at a time: concurrent writers rarely share a slot.
    my_slot SMALLINT := pg_backend_pid() % 16;
BEGIN
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND OLD.status IS DISTINCT FROM NEW.status) THEN
        IF TG_OP = 'UPDATE' THEN
            -- Lock both rows in status order: two transactions moving tasks between the
            -- same two statuses in opposite directions must not deadlock.
            PERFORM 1 FROM task_counts
            WHERE slot = my_slot AND status IN (OLD.status, NEW.status)
            ORDER BY status FOR UPDATE;
            UPDATE task_counts SET n = n - 1, input_tokens = input_tokens - OLD.input_tokens,
                output_tokens = output_tokens - OLD.output_tokens, cost_usd = cost_usd - OLD.cost_usd
            WHERE status = OLD.status AND slot = my_slot;
        END IF;
        UPDATE task_counts SET n = n + 1, input_tokens = input_tokens + NEW.input_tokens,
            output_tokens = output_tokens + NEW.output_tokens, cost_usd = cost_usd + NEW.cost_usd
        WHERE status = NEW.status AND slot = my_slot;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Same status: only the usage sums move.
        UPDATE task_counts SET input_tokens = input_tokens + NEW.input_tokens - OLD.input_tokens,
            output_tokens = output_tokens + NEW.output_tokens - OLD.output_tokens,
            cost_usd = cost_usd + NEW.cost_usd - OLD.cost_usd
        WHERE status = NEW.status AND slot = my_slot;
    ELSE
        UPDATE task_counts SET n = n - 1, input_tokens = input_tokens - OLD.input_tokens,
            output_tokens = output_tokens - OLD.output_tokens, cost_usd = cost_usd - OLD.cost_usd
        WHERE status = OLD.status AND slot = my_slot;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_counts_insert_delete AFTER INSERT OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_counts_follow();
-- Only when a counted value changed: most task updates (times, result, last_seq) leave
-- the counters, and their row locks, alone.
CREATE TRIGGER task_counts_update AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.input_tokens <> NEW.input_tokens
          OR OLD.output_tokens <> NEW.output_tokens
          OR OLD.cost_usd <> NEW.cost_usd)
    EXECUTE FUNCTION task_counts_follow();
