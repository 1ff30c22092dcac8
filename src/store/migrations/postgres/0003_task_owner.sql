-- The API key (by name) that created a task; NULL without API keys.
-- A key that is not an admin sees only its own tasks.
ALTER TABLE tasks ADD COLUMN owner TEXT;
CREATE INDEX tasks_by_owner ON tasks (owner, created_at, task_id);
CREATE INDEX tasks_by_owner_status ON tasks (owner, status, created_at, task_id);
