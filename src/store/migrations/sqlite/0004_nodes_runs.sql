-- Nodes and runs (see src/store/runs.rs). A single SQLite node does not use them today
-- (its run slots and stop handles are in memory), but the rows and their rules are the
-- same as PostgreSQL's, so both backends pass one contract.
CREATE TABLE nodes (
    node_id       TEXT PRIMARY KEY NOT NULL,
    address       TEXT NOT NULL,            -- where other nodes reach its gRPC port
    slots         INTEGER NOT NULL,         -- --max-running-tasks of the node
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- One execution of a task: a Trae run, or an Agent Protocol task's step session.
CREATE TABLE runs (
    run_id         TEXT PRIMARY KEY NOT NULL,
    task_id        TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    kind           TEXT NOT NULL CHECK (kind IN ('trae', 'session')),
    status         TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done')),
    node_id        TEXT,                    -- the holder while running
    attempt        INTEGER NOT NULL DEFAULT 0,  -- fences every write of the holder
    lease_until    INTEGER NOT NULL DEFAULT 0,
    busy           INTEGER NOT NULL DEFAULT 0,  -- holds a run slot now
    spec           TEXT,                    -- JSON: what a claiming node needs to start it
    cancel_reason  TEXT,                    -- a durable stop request
    created_at     INTEGER NOT NULL
);
CREATE INDEX runs_queued ON runs (created_at, run_id) WHERE status = 'queued';
CREATE INDEX runs_running_by_node ON runs (node_id) WHERE status = 'running';
CREATE INDEX runs_running_by_lease ON runs (lease_until) WHERE status = 'running';
CREATE UNIQUE INDEX runs_active_by_task ON runs (task_id) WHERE status <> 'done';  -- one unfinished run per task
