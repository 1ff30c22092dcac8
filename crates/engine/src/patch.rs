//! The patch a task produced: the git diff of its working directory against
//! the commit it started from, including new untracked files.
//!
//! Untracked files are made visible with `git add --intent-to-add` into a
//! temporary copy of the index (`GIT_INDEX_FILE`), so the user's own index,
//! staging and all, is left exactly as it was. Diffing against the start
//! commit also keeps changes the model committed itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::process::Command;

/// A git command taking longer than this is treated as failed.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("git {args} failed: {message}")]
    Git { args: String, message: String },
    #[error("could not write the patch to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A git work tree and the commit a task started from.
#[derive(Debug, Clone)]
pub struct GitWorkspace {
    toplevel: PathBuf,
    /// Start commit, or the empty tree in a repository without commits.
    base: String,
    /// Top-level-relative paths kept out of the diff (the task's own outputs).
    excluded: Vec<String>,
}

impl GitWorkspace {
    /// The work tree containing `dir`, based at its current `HEAD`; `None`
    /// when `dir` is not inside a git work tree (or git is missing).
    pub async fn open(dir: &Path) -> Option<Self> {
        let toplevel = git(dir, &["rev-parse", "--show-toplevel"], None)
            .await
            .ok()?;
        let toplevel = PathBuf::from(toplevel.trim_end_matches('\n'));
        let base = match git(
            &toplevel,
            &["rev-parse", "--verify", "-q", "HEAD^{commit}"],
            None,
        )
        .await
        {
            Ok(head) => head.trim().to_string(),
            Err(_) => git(&toplevel, &["hash-object", "-t", "tree", "/dev/null"], None)
                .await
                .ok()?
                .trim()
                .to_string(),
        };
        Some(Self {
            toplevel,
            base,
            excluded: Vec::new(),
        })
    }

    pub fn toplevel(&self) -> &Path {
        &self.toplevel
    }

    /// The commit (or empty tree) diffs are taken against.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Keeps `path` (e.g. the patch or trajectory file itself) out of diffs
    /// when it lies inside the work tree.
    pub fn exclude(&mut self, path: &Path) {
        let Some(absolute) = resolve_existing_prefix(path) else {
            return;
        };
        let top = self
            .toplevel
            .canonicalize()
            .unwrap_or_else(|_| self.toplevel.clone());
        if let Ok(relative) = absolute.strip_prefix(&top) {
            self.excluded.push(relative.to_string_lossy().into_owned());
        }
    }

    /// The full patch: every change since the base, new untracked (not
    /// ignored) files included.
    pub async fn diff(&self) -> Result<String, PatchError> {
        self.diff_with(&[
            "--no-color",
            "--no-ext-diff",
            "--src-prefix=a/",
            "--dst-prefix=b/",
        ])
        .await
    }

    /// Paths (relative to the top level) changed since the base.
    pub async fn changed_paths(&self) -> Result<Vec<String>, PatchError> {
        let out = self
            .diff_with(&["--name-only", "-z", "--no-ext-diff"])
            .await?;
        Ok(out
            .split('\0')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Whether anything other than tests changed (the `must_patch` gate).
    pub async fn has_non_test_changes(&self) -> Result<bool, PatchError> {
        Ok(self.changed_paths().await?.iter().any(|p| !is_test_path(p)))
    }

    /// Writes the full patch to `path` (parent directories created);
    /// returns its size in bytes.
    pub async fn write_patch(&self, path: &Path) -> Result<u64, PatchError> {
        let patch = self.diff().await?;
        write_file(path, patch.as_bytes()).await?;
        Ok(patch.len() as u64)
    }

    async fn diff_with(&self, options: &[&str]) -> Result<String, PatchError> {
        let index = TempIndex::new(&self.toplevel).await?;
        let env = Some(index.path.as_path());
        git(
            &self.toplevel,
            &["add", "--intent-to-add", "--all", "--", "."],
            env,
        )
        .await?;
        let mut args = vec!["-c", "core.quotepath=off", "diff"];
        args.extend_from_slice(options);
        args.push(&self.base);
        args.push("--");
        args.push(":/");
        let excludes: Vec<String> = self
            .excluded
            .iter()
            .map(|p| format!(":(top,exclude,literal){p}"))
            .collect();
        args.extend(excludes.iter().map(String::as_str));
        git(&self.toplevel, &args, env).await
    }
}

/// `path` with its longest existing ancestor canonicalized (symlinks such as
/// macOS's `/tmp` resolved), so it compares with git's top level even when
/// the file and its directories do not exist yet.
fn resolve_existing_prefix(path: &Path) -> Option<PathBuf> {
    let mut rest = Vec::new();
    let mut current = path;
    loop {
        if let Ok(real) = current.canonicalize() {
            return Some(rest.iter().rev().fold(real, |acc: PathBuf, c| acc.join(c)));
        }
        rest.push(current.file_name()?.to_owned());
        current = current.parent()?;
    }
}

/// Writes `bytes` to `path` via a temporary file and a rename, so readers
/// never see half a file.
pub(crate) async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PatchError> {
    let err = |source| PatchError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, bytes).await.map_err(err)?;
    tokio::fs::rename(&tmp, path).await.map_err(err)
}

/// Whether a changed path is a test (ignored by the `must_patch` gate): a
/// `test`/`tests`/`testing` directory, `test_*` / `*_test.*` / `*.test.*` /
/// `*.spec.*` files, `conftest.py`, `tox.ini`. Matched on whole path
/// components, so `src/latest_version.py` is not a test.
pub fn is_test_path(path: &str) -> bool {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let Some((file, dirs)) = components.split_last() else {
        return false;
    };
    if dirs
        .iter()
        .any(|d| matches!(*d, "test" | "tests" | "testing" | "__tests__") || d.starts_with("test_"))
    {
        return true;
    }
    let stem = file.split('.').next().unwrap_or(file);
    file.starts_with("test_")
        || stem.ends_with("_test")
        || stem.ends_with("_tests")
        || file.contains(".test.")
        || file.contains(".spec.")
        || matches!(*file, "conftest.py" | "tox.ini")
}

/// A private copy of the repository's index, removed on drop.
struct TempIndex {
    path: PathBuf,
}

static TEMP_INDEX_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempIndex {
    async fn new(toplevel: &Path) -> Result<Self, PatchError> {
        let path = std::env::temp_dir().join(format!(
            "agentd-index-{}-{}",
            std::process::id(),
            TEMP_INDEX_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let real = git(toplevel, &["rev-parse", "--git-path", "index"], None).await?;
        let real = toplevel.join(real.trim_end_matches('\n'));
        // Starting from the real index keeps its stat cache (fast on big trees);
        // a repository without commits may have no index yet.
        if real.exists() {
            copy_keeping_mtime(&real, &path).map_err(|e| PatchError::Git {
                args: "index copy".into(),
                message: e.to_string(),
            })?;
        }
        Ok(Self { path })
    }
}

/// Copies the index with its modification time: git judges "racily clean"
/// entries (changed in the same second the index was written, same size) by
/// the index file's mtime, and a fresh mtime would hide such edits.
fn copy_keeping_mtime(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to)?;
    let modified = std::fs::metadata(from)?.modified()?;
    std::fs::File::options()
        .write(true)
        .open(to)?
        .set_modified(modified)
}

impl Drop for TempIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn git(dir: &Path, args: &[&str], index: Option<&Path>) -> Result<String, PatchError> {
    let mut cmd = Command::new("git");
    cmd.arg("--no-pager")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(index) = index {
        cmd.env("GIT_INDEX_FILE", index);
    }
    let failed = |message: String| PatchError::Git {
        args: args.join(" "),
        message,
    };
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| failed(format!("no answer in {} s", GIT_TIMEOUT.as_secs())))?
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_paths_are_recognised() {
        for p in [
            "tests/a.py",
            "pkg/test/x.go",
            "test_a.py",
            "src/test_util/x.py",
            "a_test.go",
            "x.test.ts",
            "conftest.py",
        ] {
            assert!(is_test_path(p), "{p}");
        }
        for p in [
            "src/latest_version.py",
            "src/main.rs",
            "contest.py",
            "testdata.txt",
            "attest/x.py",
        ] {
            assert!(!is_test_path(p), "{p}");
        }
    }

    fn sh(dir: &Path, script: &str) {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }

    const INIT: &str =
        "git init -q && git config user.email t@example.com && git config user.name t";

    #[tokio::test]
    async fn diff_includes_untracked_and_committed_changes_without_touching_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sh(
            d,
            &format!(
                "{INIT} && echo one > a.txt && echo '*.log' > .gitignore && git add . && git commit -qm init"
            ),
        );
        let ws = GitWorkspace::open(d).await.unwrap();
        sh(
            d,
            "echo two >> a.txt && echo new > new.txt && echo x > ignored.log && mkdir -p tests && echo t > tests/t.py",
        );
        sh(d, "echo staged > staged.txt && git add staged.txt");
        let status_before = std::process::Command::new("git")
            .args(["status", "--porcelain"])
            .current_dir(d)
            .output()
            .unwrap();

        let patch = ws.diff().await.unwrap();
        assert!(
            patch.contains("diff --git a/a.txt b/a.txt") && patch.contains("+two"),
            "{patch}"
        );
        assert!(
            patch.contains("diff --git a/new.txt b/new.txt\nnew file mode"),
            "{patch}"
        );
        assert!(patch.contains("b/staged.txt"));
        assert!(!patch.contains("ignored.log"));
        let status_after = std::process::Command::new("git")
            .args(["status", "--porcelain"])
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(
            status_before.stdout, status_after.stdout,
            "the user's index changed"
        );

        // A commit made during the task stays in the patch.
        sh(d, "git add -A && git commit -qm 'model commit'");
        assert_eq!(ws.diff().await.unwrap(), patch);
        let mut paths = ws.changed_paths().await.unwrap();
        paths.sort();
        assert_eq!(paths, ["a.txt", "new.txt", "staged.txt", "tests/t.py"]);
    }

    #[tokio::test]
    async fn must_patch_gate_ignores_tests_and_own_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sh(d, INIT);
        let mut ws = GitWorkspace::open(d).await.unwrap();
        ws.exclude(&d.join("out/task.patch"));
        assert!(!ws.has_non_test_changes().await.unwrap());
        sh(
            d,
            "mkdir -p tests out && echo t > tests/test_x.py && echo p > out/task.patch",
        );
        assert!(!ws.has_non_test_changes().await.unwrap());
        sh(d, "echo code > main.py");
        assert!(ws.has_non_test_changes().await.unwrap());
        let patch_file = d.join("out/task.patch");
        let bytes = ws.write_patch(&patch_file).await.unwrap();
        let written = std::fs::read_to_string(&patch_file).unwrap();
        assert_eq!(bytes, written.len() as u64);
        assert!(written.contains("b/main.py") && written.contains("b/tests/test_x.py"));
        assert!(!written.contains("task.patch"));
    }

    #[tokio::test]
    async fn same_size_edit_right_after_the_commit_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sh(
            d,
            &format!("{INIT} && echo 'return a - b' > c.py && git add . && git commit -qm init"),
        );
        let ws = GitWorkspace::open(d).await.unwrap();
        // Same size, same inode, same second as the index was written.
        std::fs::write(d.join("c.py"), "return a + b\n").unwrap();
        let patch = ws.diff().await.unwrap();
        assert!(patch.contains("+return a + b"), "{patch}");
    }

    #[tokio::test]
    async fn not_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        assert!(GitWorkspace::open(dir.path()).await.is_none());
    }
}
