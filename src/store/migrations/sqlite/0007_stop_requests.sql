-- A stop asked of a running task, on disk before the run is told: a crash before the
-- run's end was written leaves it here, and the next start ends the task `stopped`
-- instead of resuming it (see tasks::resume).
CREATE TABLE stop_requests (
    task_id     TEXT PRIMARY KEY REFERENCES tasks (task_id) ON DELETE CASCADE,
    reason      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
