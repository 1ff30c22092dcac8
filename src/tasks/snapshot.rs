//! Workspace snapshots: the size and modification time of every file, taken
//! before and after an Agent Protocol step, so the files the step created
//! or changed become its artifacts. Metadata only (no hashing): a step must
//! not pay for reading a large workspace twice.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::error::Result;

/// Files a snapshot holds at most; a larger workspace is cut off there.
const MAX_FILES: usize = 10_000;

/// Files of a workspace by path relative to it: (size, modification time).
#[derive(Debug, Default)]
pub struct Snapshot(HashMap<PathBuf, (u64, SystemTime)>);

impl Snapshot {
    /// Snapshots `dir` on a blocking thread (it walks the whole tree).
    pub async fn take(dir: &Path) -> Result<Self> {
        let dir = dir.to_path_buf();
        Ok(tokio::task::spawn_blocking(move || Self::scan(&dir))
            .await
            .map_err(anyhow::Error::new)?)
    }

    /// Skips `.git`; stops at [`MAX_FILES`].
    fn scan(dir: &Path) -> Self {
        let mut out = HashMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    if entry.file_name() != ".git" {
                        stack.push(path);
                    }
                } else if meta.is_file() {
                    if out.len() >= MAX_FILES {
                        return Self(out);
                    }
                    let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                    out.insert(
                        rel,
                        (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH)),
                    );
                }
            }
        }
        Self(out)
    }

    /// Files new or changed since `before`, with their size.
    pub fn changed_since(self, before: &Snapshot) -> impl Iterator<Item = (PathBuf, u64)> {
        self.0
            .into_iter()
            .filter(move |(path, meta)| before.0.get(path) != Some(meta))
            .map(|(path, (size, _))| (path, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_new_and_changed_files_but_not_unchanged_ones_or_git() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("kept.txt"), "same").unwrap();
        std::fs::write(root.join("src/edited.rs"), "fn a() {}").unwrap();
        let before = Snapshot::take(root).await.unwrap();

        std::fs::write(root.join("src/edited.rs"), "fn a() { b() }").unwrap();
        std::fs::write(root.join("src/new.rs"), "x").unwrap();
        std::fs::write(root.join(".git/index"), "git's own").unwrap();
        let after = Snapshot::take(root).await.unwrap();

        let mut changed: Vec<_> = after.changed_since(&before).collect();
        changed.sort();
        assert_eq!(
            changed,
            vec![
                (PathBuf::from("src/edited.rs"), 14),
                (PathBuf::from("src/new.rs"), 1)
            ]
        );
    }
}
