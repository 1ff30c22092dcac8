-- Tasks of both dialects share one table: a task created with POST /api/run
-- is also an Agent Protocol task, and the other way round.
-- Times are epoch milliseconds; JSON columns hold objects as text.
CREATE TABLE tasks (
    task_id           TEXT PRIMARY KEY NOT NULL,
    input             TEXT NOT NULL,
    additional_input  TEXT NOT NULL DEFAULT '{}',
    status            TEXT NOT NULL,            -- created|running|completed|failed|stopped
    origin            TEXT NOT NULL,            -- trae|agent_protocol: which API created it
    run_spec          TEXT,                     -- JSON: working_dir, provider, model, ... (Trae runs)
    created_at        INTEGER NOT NULL,
    modified_at       INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    result            TEXT,
    error             TEXT,
    input_tokens      INTEGER NOT NULL DEFAULT 0,
    output_tokens     INTEGER NOT NULL DEFAULT 0,
    cost_usd          REAL NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_created ON tasks (created_at, task_id);
CREATE INDEX tasks_by_status ON tasks (status, created_at, task_id);

CREATE TABLE steps (
    step_id            TEXT PRIMARY KEY NOT NULL,
    task_id            TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    number             INTEGER NOT NULL,        -- 1, 2, ... within the task
    name               TEXT NOT NULL DEFAULT '',
    status             TEXT NOT NULL,           -- created|running|completed (Agent Protocol)
    state              TEXT NOT NULL,           -- completed|failed|stopped|running: the outcome
    input              TEXT NOT NULL DEFAULT '',
    additional_input   TEXT NOT NULL DEFAULT '{}',
    output             TEXT NOT NULL DEFAULT '',
    additional_output  TEXT NOT NULL DEFAULT '{}',
    is_last            INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    UNIQUE (task_id, number)
);

CREATE TABLE artifacts (
    artifact_id    TEXT PRIMARY KEY NOT NULL,
    task_id        TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    step_id        TEXT REFERENCES steps (step_id) ON DELETE SET NULL,
    file_name      TEXT NOT NULL,
    relative_path  TEXT NOT NULL DEFAULT '',    -- as given by the client (directory or full path)
    location       TEXT NOT NULL,               -- path of the file inside the task workspace
    file_size      INTEGER NOT NULL,
    agent_created  INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    UNIQUE (task_id, location)
);
CREATE INDEX artifacts_by_task ON artifacts (task_id, created_at);

-- The per-task event log: seq is 1, 2, 3, ... per task. Readers replay it.
CREATE TABLE events (
    task_id    TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    timestamp  INTEGER NOT NULL,
    body       TEXT NOT NULL,                   -- JSON: message, result, error, data
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
