//! Each task's workspace directory and the files in it: path sanitising,
//! streamed uploads (temp file, fsync, rename) and downloads.

use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;

use crate::error::{Error, Result};

/// Uploads larger than this are refused with 413 (the document's 100 MB).
pub const MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;

/// Where workspaces and in-flight uploads live, under the data directory.
#[derive(Debug, Clone)]
pub struct Workspaces {
    data_dir: PathBuf,
    root: PathBuf,
    tmp: PathBuf,
}

impl Workspaces {
    /// Creates the directories and removes uploads a crash left half-written.
    /// `data_dir` must be absolute: workspaces are handed to the engine as
    /// working directories.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        Self::open_for_node(data_dir, None)
    }

    /// As [`Workspaces::open`] for one node of several sharing `data_dir`:
    /// its half-written uploads are kept apart (`tmp/<node id>/`), so a node
    /// starting up never removes another live node's.
    pub fn open_for_node(data_dir: &Path, node_id: Option<&str>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            data_dir.is_absolute(),
            "data directory {} is not absolute",
            data_dir.display()
        );
        let root = data_dir.join("workspaces");
        let tmp = match node_id {
            Some(node) => data_dir.join("tmp").join(node),
            None => data_dir.join("tmp"),
        };
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("cleaning {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            root,
            tmp,
        })
    }

    /// The data directory these workspaces live in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The task's workspace directory (created on first use).
    pub fn dir(&self, task_id: &str) -> PathBuf {
        self.root.join(task_id)
    }

    pub async fn remove(&self, task_id: &str) -> Result<()> {
        match tokio::fs::remove_dir_all(self.dir(task_id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Starts receiving a file: bytes go to a temporary file until `finish`.
    pub async fn begin_upload(&self) -> Result<Upload> {
        let temp = self.tmp.join(format!("{}.part", uuid::Uuid::new_v4()));
        let file = tokio::fs::File::create(&temp).await?;
        Ok(Upload {
            temp,
            file: Some(file),
            written: 0,
            committed: false,
        })
    }

    /// Moves a finished upload into the workspace at `location` (already
    /// sanitised), refusing to follow a symlink out of the workspace.
    pub async fn place(&self, task_id: &str, upload: Upload, location: &str) -> Result<()> {
        let ws = self.dir(task_id);
        let dest = ws.join(location);
        let parent = dest.parent().unwrap_or(&ws).to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| conflict(e, location))?;
        let ws_real = tokio::fs::canonicalize(&ws).await?;
        let parent_real = tokio::fs::canonicalize(&parent).await?;
        if !parent_real.starts_with(&ws_real) {
            return Err(Error::invalid(format!(
                "relative_path {location:?} leaves the task workspace"
            )));
        }
        if tokio::fs::symlink_metadata(&dest)
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return Err(Error::invalid(format!(
                "a directory already exists at {location:?}"
            )));
        }
        upload.commit(&dest).await.map_err(|e| match e {
            Error::Internal(inner) => match inner.downcast::<std::io::Error>() {
                Ok(io) => conflict(io, location),
                Err(inner) => Error::Internal(inner),
            },
            other => other,
        })?;
        // Make the rename itself durable.
        tokio::fs::File::open(&parent).await?.sync_all().await?;
        Ok(())
    }
}

/// A place in the workspace that the file system refuses (a file where a
/// directory is needed, a name too long) is the caller's error; anything else
/// is ours.
fn conflict(e: std::io::Error, location: &str) -> Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotADirectory | IsADirectory | AlreadyExists | InvalidFilename | DirectoryNotEmpty => {
            Error::invalid(format!("cannot place the file at {location:?}: {e}"))
        }
        _ => e.into(),
    }
}

/// A file being received. Dropped without `commit`, the partial file is removed.
pub struct Upload {
    temp: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
    /// Renamed into the workspace: the temporary file is gone already.
    committed: bool,
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > MAX_UPLOAD_BYTES {
            return Err(Error::PayloadTooLarge(format!(
                "upload exceeds the limit of {MAX_UPLOAD_BYTES} bytes (100 MB)"
            )));
        }
        let file = self.file.as_mut().context("upload already finished")?;
        file.write_all(chunk).await?;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    async fn commit(mut self, dest: &Path) -> Result<()> {
        let mut file = self.file.take().context("upload already finished")?;
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&self.temp, dest).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Normalises a client-supplied `relative_path`: '/'-separated, relative,
/// no `..`, no NUL, no backslash; `.` and empty segments dropped. "" is the
/// workspace root.
pub fn sanitize_relative_path(raw: &str) -> Result<String> {
    if raw.contains('\0') {
        return Err(Error::invalid("relative_path must not contain NUL bytes"));
    }
    if raw.contains('\\') {
        return Err(Error::invalid("relative_path must use '/' as separator"));
    }
    let path = Path::new(raw);
    if path.is_absolute() {
        return Err(Error::invalid(format!(
            "relative_path {raw:?} must be relative to the task workspace"
        )));
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::invalid(format!(
                    "relative_path {raw:?} must not contain '..'"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::invalid(format!(
                    "relative_path {raw:?} must be relative"
                )));
            }
        }
    }
    if let Some(long) = parts.iter().find(|p| p.len() > 255) {
        return Err(Error::invalid(format!(
            "relative_path segment {long:?} is longer than 255 bytes"
        )));
    }
    let joined = parts.join("/");
    if joined.len() > 1024 {
        return Err(Error::invalid("relative_path is longer than 1024 bytes"));
    }
    Ok(joined)
}

/// A file name from an upload: the last path segment, which must be a real
/// name (not empty, `.` or `..`) without NUL.
pub fn sanitize_file_name(raw: &str) -> Result<String> {
    if raw.contains('\0') {
        return Err(Error::invalid("file name must not contain NUL bytes"));
    }
    let name = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." {
        return Err(Error::invalid(format!("invalid file name {raw:?}")));
    }
    if name.len() > 255 {
        return Err(Error::invalid("file name is longer than 255 bytes"));
    }
    Ok(name.to_string())
}

/// Where a file lands in the workspace: `relative_path` is a directory (the
/// official spec), unless its last segment is the file name itself (the
/// AutoGPT document's `data/sales_data.csv`).
pub fn location(relative_path: &str, file_name: &str) -> String {
    if relative_path.is_empty() {
        file_name.to_string()
    } else if relative_path.rsplit('/').next() == Some(file_name) {
        relative_path.to_string()
    } else {
        format!("{relative_path}/{file_name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalised_or_refused() {
        assert_eq!(sanitize_relative_path("").unwrap(), "");
        assert_eq!(sanitize_relative_path("./a//b/").unwrap(), "a/b");
        assert_eq!(sanitize_relative_path("data/x.csv").unwrap(), "data/x.csv");
        for bad in ["../x", "a/../../b", "/etc", "a\0b", "a\\b", "a/.."] {
            assert!(sanitize_relative_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn file_names_keep_only_the_last_segment() {
        assert_eq!(sanitize_file_name("report.pdf").unwrap(), "report.pdf");
        assert_eq!(sanitize_file_name("dir/report.pdf").unwrap(), "report.pdf");
        assert_eq!(
            sanitize_file_name("C:\\x\\report.pdf").unwrap(),
            "report.pdf"
        );
        for bad in ["", ".", "..", "a/..", "x\0y"] {
            assert!(sanitize_file_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest::proptest! {
        /// Whatever a client sends, an accepted path is relative, has no `..`,
        /// NUL or backslash, no empty or `.` segments, and is already normal.
        #[test]
        fn sanitised_paths_stay_inside(raw in "[a-z./\\\\\\x00]{0,40}") {
            if let Ok(clean) = sanitize_relative_path(&raw) {
                proptest::prop_assert!(!clean.starts_with('/'));
                proptest::prop_assert!(!clean.contains('\0') && !clean.contains('\\'));
                proptest::prop_assert!(clean.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..") || clean.is_empty());
                proptest::prop_assert_eq!(sanitize_relative_path(&clean).ok(), Some(clean.clone()));
                let loc = location(&clean, "f.txt");
                proptest::prop_assert!(!loc.split('/').any(|seg| seg == ".."));
            }
        }
    }

    #[test]
    fn location_accepts_directory_or_full_path() {
        assert_eq!(location("", "a.txt"), "a.txt");
        assert_eq!(location("data", "a.txt"), "data/a.txt");
        assert_eq!(location("data/a.txt", "a.txt"), "data/a.txt");
    }
}
