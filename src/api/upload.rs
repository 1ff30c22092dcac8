//! Artifact uploads arriving as a stream of `UploadArtifactRequest`s.
//!
//! Through Envoy, a `multipart/form-data` body is split into chunks: the first
//! message carries `task_id`, the `relative_path` query parameter and the
//! content type with its boundary. The body is parsed as a stream (multer)
//! and the file part written to disk as it arrives: nothing holds the whole
//! file. Parts may come in any order. Native gRPC callers may instead send
//! raw bytes with `file_name` set.

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use tonic::{Status, Streaming};

use crate::{
    error::{Error, Result},
    proto::ap::{UploadArtifactRequest, UploadArtifactRequest as Msg},
    tasks::Artifact,
    tasks::{Caller, MAX_UPLOAD_BYTES, TaskManager, Upload, sanitize_relative_path},
};

/// Form fields other than the file are small; this bounds what we buffer.
const MAX_FIELD_BYTES: u64 = 64 * 1024;

pub async fn receive(
    tasks: &TaskManager,
    caller: &Caller,
    mut messages: Streaming<UploadArtifactRequest>,
) -> Result<Artifact> {
    let first = messages
        .message()
        .await
        .map_err(|s| Error::invalid(format!("upload interrupted: {}", s.message())))?
        .ok_or_else(|| Error::invalid("empty upload"))?;
    let task_id = first.task_id.clone();
    // Refuse a bad path before receiving 100 MB.
    let mut relative_path = sanitize_relative_path(&first.relative_path)?;
    let content_type = first
        .file
        .as_ref()
        .map(|f| f.content_type.clone())
        .unwrap_or_default();
    let raw_file_name = first.file_name.clone();
    let mut upload = tasks.begin_upload(caller, &task_id).await?;

    let body = stream::once(async move { Ok::<_, Status>(first) })
        .chain(messages)
        .map(|m| m.map(|m: Msg| m.file.map(|f| Bytes::from(f.data)).unwrap_or_default()));

    let file_name = match multer::parse_boundary(&content_type) {
        Ok(boundary) => {
            let (name, path) = receive_multipart(body, boundary, &mut upload).await?;
            if let Some(path) = path {
                relative_path = sanitize_relative_path(&path)?;
            }
            name
        }
        Err(_) if content_type.starts_with("multipart/") => {
            return Err(Error::invalid("multipart body without a boundary"));
        }
        Err(_) if raw_file_name.is_empty() => {
            return Err(Error::invalid(
                "send the file as multipart/form-data with a 'file' part \
                 (gRPC callers may send raw bytes with file_name set)",
            ));
        }
        Err(_) => {
            receive_raw(body, &mut upload).await?;
            raw_file_name
        }
    };
    tasks
        .finish_upload(caller, &task_id, upload, &file_name, &relative_path)
        .await
}

/// Returns the file's name and the `relative_path` form field, if any.
async fn receive_multipart(
    body: impl futures_util::Stream<Item = Result<Bytes, Status>> + Send + 'static,
    boundary: String,
    upload: &mut Upload,
) -> Result<(String, Option<String>)> {
    let limits = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(MAX_UPLOAD_BYTES + 1024 * 1024)
            .for_field("relative_path", MAX_FIELD_BYTES),
    );
    let mut form = multer::Multipart::with_constraints(body, boundary, limits);
    let mut file_name = None;
    let mut relative_path = None;
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") => {
                if file_name.is_some() {
                    return Err(Error::invalid(
                        "more than one 'file' part; upload one file per request",
                    ));
                }
                file_name = Some(field.file_name().unwrap_or("file").to_string());
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    upload.write(&chunk).await?;
                }
            }
            Some("relative_path") => {
                relative_path = Some(field.text().await.map_err(multipart_error)?)
            }
            // Unknown parts are read and dropped, within the stream limit.
            _ => while field.chunk().await.map_err(multipart_error)?.is_some() {},
        }
    }
    let file_name = file_name.ok_or_else(|| Error::invalid("multipart body has no 'file' part"))?;
    Ok((file_name, relative_path))
}

async fn receive_raw(
    body: impl futures_util::Stream<Item = Result<Bytes, Status>>,
    upload: &mut Upload,
) -> Result<()> {
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|s| Error::invalid(format!("upload interrupted: {}", s.message())))?;
        upload.write(&chunk).await?;
    }
    Ok(())
}

fn multipart_error(e: multer::Error) -> Error {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            Error::PayloadTooLarge(format!(
                "upload exceeds the limit of {MAX_UPLOAD_BYTES} bytes (100 MB)"
            ))
        }
        _ => Error::invalid(format!("malformed multipart body: {e}")),
    }
}
