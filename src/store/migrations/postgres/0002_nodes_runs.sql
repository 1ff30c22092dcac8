-- Nodes and runs: several agentd nodes share this database (src/store/runs.rs).
-- Times are epoch milliseconds from the writing node's clock.
CREATE TABLE nodes (
    node_id       TEXT PRIMARY KEY,
    address       TEXT NOT NULL,            -- where other nodes reach its gRPC port
    slots         BIGINT NOT NULL,          -- --max-running-tasks of the node
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);

-- One execution of a task: a Trae run, or an Agent Protocol task's step session. Exactly
-- one node holds a running row (claimed with FOR UPDATE SKIP LOCKED), under a lease its
-- heartbeat renews; `attempt` grows with every claim and fences the holder's writes.
CREATE TABLE runs (
    run_id         TEXT PRIMARY KEY,
    task_id        TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    kind           TEXT NOT NULL CHECK (kind IN ('trae', 'session')),
    status         TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done')),
    node_id        TEXT,
    attempt        BIGINT NOT NULL DEFAULT 0,
    lease_until    BIGINT NOT NULL DEFAULT 0,
    busy           BOOLEAN NOT NULL DEFAULT FALSE,  -- holds a run slot now
    spec           TEXT,                    -- JSON: what a claiming node needs to start it
    cancel_reason  TEXT,                    -- a durable stop request
    created_at     BIGINT NOT NULL
);
CREATE INDEX runs_queued ON runs (created_at, run_id) WHERE status = 'queued';
CREATE INDEX runs_running_by_node ON runs (node_id) WHERE status = 'running';
CREATE INDEX runs_running_by_lease ON runs (lease_until) WHERE status = 'running';
CREATE UNIQUE INDEX runs_active_by_task ON runs (task_id) WHERE status <> 'done';  -- one unfinished run per task
