//! Optional confinement of the `bash` tool with bubblewrap (`bwrap`): the
//! working directory is writable, the rest of the filesystem read-only,
//! `/tmp` private, named paths (the service's data and configuration) hidden,
//! and the network namespace unshared unless the network is allowed.
//!
//! No new PID namespace: the shell's `$$` and every process it starts keep
//! their host pids, so the process-group bookkeeping (stop, timeout, crash
//! recovery) works unchanged; `bwrap` itself leads the group. No
//! `--die-with-parent` either: it is `PR_SET_PDEATHSIG`, which fires when the
//! spawning *thread* exits (any tokio worker), not the service; the recorded
//! process groups cover a crashed service instead.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How the bash tool is confined (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BashSandbox {
    /// The `bwrap` executable.
    pub program: PathBuf,
    /// Keep the host's network (otherwise commands see only a loopback).
    pub network: bool,
    /// Absolute paths commands must not see: directories become empty,
    /// files read as empty. Paths that do not exist are skipped.
    pub hidden: Vec<PathBuf>,
}

impl BashSandbox {
    /// `bwrap` (found on `PATH`), without network, hiding nothing.
    pub fn new(network: bool) -> Self {
        Self {
            program: PathBuf::from("bwrap"),
            network,
            hidden: Vec::new(),
        }
    }

    /// The `bwrap` arguments that confine a command run in `working_dir`,
    /// up to and including `--` (the command follows).
    pub fn args(&self, working_dir: &Path) -> Vec<OsString> {
        let mut args = Args::default();
        args.add(["--ro-bind", "/", "/"]);
        args.add(["--dev", "/dev"]);
        args.add(["--proc", "/proc"]);
        args.add(["--tmpfs", "/tmp"]);
        let (dirs, files): (Vec<&PathBuf>, Vec<&PathBuf>) = self
            .hidden
            .iter()
            .filter(|p| p.is_absolute() && p.exists())
            .partition(|p| p.is_dir());
        // Hidden directories first, so a working directory inside one (a
        // task workspace under the data directory) is bound back in.
        for dir in dirs {
            args.add(["--tmpfs".as_ref(), dir.as_os_str()]);
        }
        let wd = working_dir.as_os_str();
        args.add(["--bind".as_ref(), wd, wd]);
        // Hidden files last, so they stay hidden inside the working directory.
        for file in files {
            args.add(["--ro-bind".as_ref(), "/dev/null".as_ref(), file.as_os_str()]);
        }
        if !self.network {
            args.add(["--unshare-net"]);
        }
        args.add(["--unshare-ipc"]);
        args.add(["--chdir".as_ref(), wd]);
        args.add(["--"]);
        args.0
    }

    /// Whether the sandbox works here: `bwrap --version`, then a trial run
    /// of `true` with exactly these arguments (user namespaces may be
    /// disabled, `/proc` may not be mountable). Ok: bwrap's version line.
    pub async fn probe(&self) -> Result<String, String> {
        let version = run(Command::new(&self.program).arg("--version"))
            .await
            .map_err(|e| format!("`{} --version` failed: {e}", self.program.display()))?;
        let trial_dir = std::env::temp_dir();
        let mut trial = Command::new(&self.program);
        trial.args(self.args(&trial_dir)).arg("true");
        run(&mut trial)
            .await
            .map_err(|e| format!("a trial run of {} failed: {e}", self.program.display()))?;
        Ok(version.trim().to_string())
    }
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn add<S: AsRef<OsStr>>(&mut self, items: impl IntoIterator<Item = S>) {
        self.0
            .extend(items.into_iter().map(|s| s.as_ref().to_os_string()));
    }
}

/// Runs a short command; its stdout when it succeeds.
async fn run(cmd: &mut Command) -> Result<String, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_bind_the_working_dir_after_hidden_dirs_and_before_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let wd = data.join("workspaces/t1");
        std::fs::create_dir_all(&wd).unwrap();
        let secret = wd.join("secret.yaml");
        std::fs::write(&secret, "key").unwrap();
        let sb = BashSandbox {
            program: "bwrap".into(),
            network: false,
            hidden: vec![data.clone(), secret.clone(), dir.path().join("missing")],
        };
        let args: Vec<String> = sb
            .args(&wd)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let pos = |s: &str| args.iter().position(|a| a == s).unwrap();
        assert!(pos(&data.display().to_string()) < pos(&wd.display().to_string()));
        assert!(pos(&wd.display().to_string()) < pos(&secret.display().to_string()));
        assert!(args.contains(&"--unshare-net".to_string()));
        assert!(!args.iter().any(|a| a.contains("missing")));
        assert_eq!(args.last().map(String::as_str), Some("--"));
        let with_net = BashSandbox {
            network: true,
            ..sb
        };
        assert!(
            !with_net
                .args(&wd)
                .iter()
                .any(|a| a.to_str() == Some("--unshare-net"))
        );
    }

    #[tokio::test]
    async fn probe_reports_a_missing_program() {
        let sb = BashSandbox {
            program: "/nonexistent/bwrap".into(),
            ..BashSandbox::new(false)
        };
        let err = sb.probe().await.unwrap_err();
        assert!(err.contains("--version"), "{err}");
    }
}
