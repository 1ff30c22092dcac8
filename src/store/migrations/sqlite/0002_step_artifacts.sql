-- Every step that created or changed an artifact. An artifact is the file at
-- one location of the workspace and keeps its id when a later step (or a
-- re-upload) changes it; each step still lists what it touched.
CREATE TABLE step_artifacts (
    step_id      TEXT NOT NULL REFERENCES steps (step_id) ON DELETE CASCADE,
    artifact_id  TEXT NOT NULL REFERENCES artifacts (artifact_id) ON DELETE CASCADE,
    PRIMARY KEY (step_id, artifact_id)
) WITHOUT ROWID;
CREATE INDEX step_artifacts_by_artifact ON step_artifacts (artifact_id);
