//! A stdio MCP server's process: spawned in its own process group (as the
//! bash tool's shell is), reported to the run's [`ProcessObserver`] before it
//! runs anything, and ended group-wide, so stop, timeout, shutdown and the
//! orphan cleanup after a crash end it (and whatever it started) like bash.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use crate::tools::process_group::{
    ProcessGroup, ProcessObserver, process_start_time, signal_group, terminate_group,
};

/// What a server inherits from the service's environment besides its own
/// `env` (the MCP SDKs' default): enough to find programs and a home, never
/// the service's provider keys.
const INHERITED_ENV: [&str; 8] = [
    "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR",
];
/// Lines of the server's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 20;

/// The last lines a server wrote to stderr (shown when it fails to start).
#[derive(Debug, Clone, Default)]
pub(super) struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: String) {
        let Ok(mut lines) = self.0.lock() else { return };
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub(super) fn text(&self) -> String {
        self.0
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// A running server process; dropping it kills its whole group.
#[derive(Debug)]
pub(super) struct ServerProcess {
    child: Child,
    pgid: Pid,
    group: ProcessGroup,
    observer: Option<Arc<dyn ProcessObserver>>,
    stderr: StderrTail,
    /// The group was terminated: nothing to kill on drop (its id may be reused).
    ended: bool,
}

/// What a stdio server is started as.
pub(super) struct Launch<'a> {
    pub(super) server: &'a str,
    pub(super) command: &'a str,
    pub(super) args: &'a [String],
    pub(super) env: &'a BTreeMap<String, String>,
    pub(super) cwd: &'a Path,
}

impl ServerProcess {
    /// Spawns the server; its stdout and stdin are the MCP transport.
    pub(super) async fn spawn(
        launch: Launch<'_>,
        observer: Option<Arc<dyn ProcessObserver>>,
    ) -> std::io::Result<(Self, ChildStdout, ChildStdin)> {
        let mut cmd = Command::new(launch.command);
        cmd.args(launch.args)
            .current_dir(launch.cwd)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for key in INHERITED_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.envs(launch.env);
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the server exited at once"))?;
        let pgid = Pid::from_raw(pid as i32);
        let group = ProcessGroup {
            pgid: pid as i32,
            start_time: process_start_time(pid as i32).unwrap_or(0),
        };
        if let Some(observer) = &observer
            && let Err(e) = observer.group_started(group).await
        {
            signal_group(pgid, Signal::SIGKILL);
            return Err(std::io::Error::other(format!(
                "could not record the server's process group, so it was ended: {e}"
            )));
        }
        let stderr = StderrTail::default();
        if let Some(err) = child.stderr.take() {
            tokio::spawn(log_stderr(launch.server.to_string(), err, stderr.clone()));
        }
        let pipes = (child.stdout.take(), child.stdin.take());
        let process = Self {
            child,
            pgid,
            group,
            observer,
            stderr,
            ended: false,
        };
        match pipes {
            (Some(stdout), Some(stdin)) => Ok((process, stdout, stdin)),
            // Dropping `process` ends the group and reports it.
            _ => Err(std::io::Error::other("the server's pipes were not created")),
        }
    }

    pub(super) fn pid(&self) -> i32 {
        self.group.pgid
    }

    pub(super) fn stderr(&self) -> &StderrTail {
        &self.stderr
    }

    /// How the process ended, if it has.
    pub(super) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// How the process ended, waiting up to `within` for it to end.
    pub(super) async fn exited_within(
        &mut self,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Some(status);
        }
        if self.ended || within.is_zero() {
            return None;
        }
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// SIGTERM to the group, SIGKILL after `grace`.
    pub(super) async fn terminate(&mut self, grace: Duration) {
        if self.ended {
            return;
        }
        let child = &mut self.child;
        terminate_group(self.pgid, grace, || {
            let _ = child.try_wait();
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await;
        self.ended = true;
        if let Some(observer) = &self.observer {
            observer.group_ended(self.group);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // kill_on_drop ends only the server itself; its children share the group.
        signal_group(self.pgid, Signal::SIGKILL);
        if let Some(observer) = &self.observer {
            observer.group_ended(self.group);
        }
    }
}

/// Servers log on stderr: into our log at debug level, the tail kept.
async fn log_stderr(server: String, stderr: ChildStderr, tail: StderrTail) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(mcp_server = %server, "{line}");
        tail.push(line);
    }
}
