//! Uploads in chunks, one unary call each (`ConsoleService.UploadChunk`):
//! gRPC-Web in a browser cannot stream a request, so the console sends a file
//! as a sequence of calls. Each chunk is written to the upload's temporary
//! file as it arrives (the 100 MB limit is the task layer's, as for
//! `UploadArtifact`); the last one places and records the artifact.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    error::{Error, Result},
    proto::console::UploadChunkRequest,
    tasks::{Artifact, Caller, TaskManager, Upload, sanitize_relative_path},
};

/// An upload nobody sent a chunk to for this long is dropped (and its
/// temporary file removed): the browser went away.
const IDLE: Duration = Duration::from_secs(600);
/// Uploads open at once; more is a client bug or abuse.
const MAX_OPEN: usize = 64;

struct Pending {
    task_id: String,
    file_name: String,
    relative_path: String,
    upload: Upload,
    touched: Instant,
}

#[derive(Default)]
pub struct ChunkedUploads {
    open: Mutex<HashMap<String, Pending>>,
}

impl ChunkedUploads {
    /// Takes one chunk; returns the upload's id, the bytes received so far,
    /// and after the last chunk the recorded artifact.
    pub async fn receive(
        &self,
        tasks: &TaskManager,
        caller: &Caller,
        chunk: UploadChunkRequest,
    ) -> Result<(String, u64, Option<Artifact>)> {
        let (id, mut pending) = if chunk.upload_id.is_empty() {
            self.begin(tasks, caller, &chunk).await?
        } else {
            // Taken out while it is written to: a concurrent chunk of the same
            // upload finds nothing and is refused rather than interleaved.
            let pending = self.take(&chunk.upload_id)?;
            if pending.task_id != chunk.task_id {
                return Err(Error::invalid("upload_id belongs to another task"));
            }
            (chunk.upload_id.clone(), pending)
        };
        if u64::from(chunk.offset) != pending.upload.len() {
            // Dropping `pending` removes the partial file: start again.
            return Err(Error::invalid(format!(
                "chunk at offset {} but {} bytes were received; upload again",
                chunk.offset,
                pending.upload.len()
            )));
        }
        pending.upload.write(&chunk.data).await?;
        let received = pending.upload.len();
        if chunk.last {
            let artifact = tasks
                .finish_upload(
                    caller,
                    &pending.task_id,
                    pending.upload,
                    &pending.file_name,
                    &pending.relative_path,
                )
                .await?;
            return Ok((id, received, Some(artifact)));
        }
        pending.touched = Instant::now();
        self.lock().insert(id.clone(), pending);
        Ok((id, received, None))
    }

    async fn begin(
        &self,
        tasks: &TaskManager,
        caller: &Caller,
        chunk: &UploadChunkRequest,
    ) -> Result<(String, Pending)> {
        if chunk.file_name.is_empty() {
            return Err(Error::invalid("the first chunk needs file_name"));
        }
        if chunk.offset != 0 {
            return Err(Error::invalid("the first chunk starts at offset 0"));
        }
        // Refuse a bad path before receiving the file.
        let relative_path = sanitize_relative_path(&chunk.relative_path)?;
        {
            let mut open = self.lock();
            open.retain(|_, p| p.touched.elapsed() < IDLE);
            if open.len() >= MAX_OPEN {
                return Err(Error::InsufficientResources {
                    message: format!("{MAX_OPEN} uploads are open; finish one first"),
                    retry_after: Some(Duration::from_secs(5)),
                });
            }
        }
        let upload = tasks.begin_upload(caller, &chunk.task_id).await?;
        Ok((
            uuid::Uuid::new_v4().to_string(),
            Pending {
                task_id: chunk.task_id.clone(),
                file_name: chunk.file_name.clone(),
                relative_path,
                upload,
                touched: Instant::now(),
            },
        ))
    }

    fn take(&self, id: &str) -> Result<Pending> {
        self.lock().remove(id).ok_or_else(|| {
            Error::invalid(format!("no open upload {id} (finished, failed or expired)"))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock leaves the map consistent (inserts and
        // removes only), so a poisoned lock is still usable.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}
