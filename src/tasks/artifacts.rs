//! Artifacts: files uploaded to a task's workspace (and, from steps, files
//! the agent wrote there), with their records in the store.

use super::{
    Caller, TaskManager, Upload, views,
    views::Artifact,
    workspace::{location, sanitize_file_name, sanitize_relative_path},
};
use crate::{
    clock,
    error::{Error, Resource, Result},
    store,
};

impl TaskManager {
    /// Checks the task exists and opens a temporary file for an upload.
    pub async fn begin_upload(&self, caller: &Caller, task_id: &str) -> Result<Upload> {
        self.task(caller, task_id).await?;
        self.workspaces.begin_upload().await
    }

    /// Moves a received file into the task workspace and records it. An
    /// earlier artifact at the same place is replaced.
    pub async fn finish_upload(
        &self,
        caller: &Caller,
        task_id: &str,
        upload: Upload,
        file_name: &str,
        relative_path: &str,
    ) -> Result<Artifact> {
        let file_name = sanitize_file_name(file_name)?;
        let relative_path = sanitize_relative_path(relative_path)?;
        let location = location(&relative_path, &file_name);
        self.task(caller, task_id).await?;
        let file_size = upload.len() as i64;
        self.workspaces.place(task_id, upload, &location).await?;
        let artifact = store::Artifact {
            artifact_id: uuid::Uuid::new_v4().to_string(),
            task_id: task_id.to_string(),
            step_id: None,
            file_name,
            relative_path,
            location,
            file_size,
            agent_created: false,
            created_at: clock::now_ms(),
        };
        Ok(self.store.upsert_artifact(&artifact, None).await?.into())
    }

    pub async fn list_artifacts(
        &self,
        caller: &Caller,
        task_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Artifact>, i64)> {
        self.task(caller, task_id).await?;
        let (artifacts, total) = self.store.list_artifacts(task_id, offset, limit).await?;
        Ok((views::all(artifacts), total))
    }

    async fn artifact(
        &self,
        caller: &Caller,
        task_id: &str,
        artifact_id: &str,
    ) -> Result<store::Artifact> {
        self.task(caller, task_id).await?;
        self.store
            .get_artifact(task_id, artifact_id)
            .await?
            .ok_or_else(|| Error::not_found(Resource::Artifact, artifact_id))
    }

    /// The artifact's record and its file, opened for reading.
    pub async fn open_artifact(
        &self,
        caller: &Caller,
        task_id: &str,
        artifact_id: &str,
    ) -> Result<(Artifact, tokio::fs::File)> {
        let artifact = self.artifact(caller, task_id, artifact_id).await?;
        let path = self.workspaces.dir(task_id).join(&artifact.location);
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok((artifact.into(), file)),
            // The agent (or a person) removed the file: the artifact is gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found(Resource::Artifact, artifact_id))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_artifact(
        &self,
        caller: &Caller,
        task_id: &str,
        artifact_id: &str,
    ) -> Result<()> {
        let artifact = self.artifact(caller, task_id, artifact_id).await?;
        if !self.store.delete_artifact(task_id, artifact_id).await? {
            return Err(Error::not_found(Resource::Artifact, artifact_id));
        }
        let path = self.workspaces.dir(task_id).join(&artifact.location);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}
