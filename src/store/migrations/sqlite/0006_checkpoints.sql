-- A run's checkpoints (the engine's agent::checkpoint), written in the transaction of the
-- events before them. Each row holds only what changed since the previous one (the new
-- messages and the totals), so a long conversation is never written again in full;
-- resuming folds them in order of n (1, 2, 3, ... per task).
CREATE TABLE checkpoints (
    task_id     TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    step        INTEGER NOT NULL,
    body        TEXT NOT NULL,                  -- JSON, opaque to the store
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (task_id, n)
) WITHOUT ROWID;
