//! `bash`: one persistent shell per task, in its own process group.
//!
//! Commands are written to the shell's stdin followed by a sentinel line that
//! prints a per-session marker and the exit status; output is read until the
//! marker shows up. State (`cd`, variables, functions) therefore persists
//! across calls, as the model expects.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::args::{Args, optional_bool, required_str};
use super::clip::{MAX_RESPONSE_CHARS, clip_middle};
use super::process_group::{
    ProcessGroup, ProcessObserver, join_cgroups_on_spawn, process_start_time, signal_group,
    terminate_group,
};
use super::sandbox::BashSandbox;
use super::{Tool, ToolOutput};
use crate::messages::ToolSpec;

pub(crate) const NAME: &str = "bash";

/// Bytes of output kept from the start and from the end of a command while it
/// runs; what lies between is counted and dropped (a runaway `yes` must not
/// exhaust memory).
const CAPTURE_HEAD_BYTES: usize = 64 * 1024;
const CAPTURE_TAIL_BYTES: usize = 64 * 1024;

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.into(),
        description: "Run commands in a bash shell\n\
* When invoking this tool, the contents of the \"command\" parameter does NOT need to be XML-escaped.\n\
* The shell starts in the project's working directory. State (current directory, environment variables, \
functions) persists across calls.\n\
* To inspect a particular line range of a file, e.g. lines 10-25, try 'sed -n 10,25p /path/to/the/file'.\n\
* Avoid commands that produce a very large amount of output: long output is clipped in the middle.\n\
* Commands read no input (stdin is /dev/null): pass non-interactive flags such as `-y`.\n\
* Each command may run for 120 seconds; after a timeout the session must be restarted with `restart: true`. \
Run long-lived processes (e.g. servers) in the background, e.g. 'python -m http.server 8080 > server.log 2>&1 &'.\n"
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "command": {
                    "type": "string",
                    "description": "The bash command to run."
                },
                "restart": {
                    "type": "boolean",
                    "description": "Set to true to restart the bash session (ends every process it started)."
                }
            },
            "required": ["command"]
        }),
    }
}

pub(crate) struct BashTool {
    working_dir: PathBuf,
    timeout: Duration,
    kill_grace: Duration,
    session: tokio::sync::Mutex<Option<BashSession>>,
    /// Process group of the current session, reachable without the session
    /// lock so that `shutdown` can interrupt a command in progress.
    group: StdMutex<Option<Pid>>,
    observer: Option<Arc<dyn ProcessObserver>>,
    sandbox: Option<BashSandbox>,
}

impl BashTool {
    pub(crate) fn new(working_dir: PathBuf, timeout: Duration, kill_grace: Duration) -> Self {
        Self {
            working_dir,
            timeout,
            kill_grace,
            session: tokio::sync::Mutex::new(None),
            group: StdMutex::new(None),
            observer: None,
            sandbox: None,
        }
    }

    /// Reports the shell's process groups to `observer`; runs the shell
    /// under `sandbox`.
    pub(crate) fn supervised(
        mut self,
        observer: Option<Arc<dyn ProcessObserver>>,
        sandbox: Option<BashSandbox>,
    ) -> Self {
        self.observer = observer;
        self.sandbox = sandbox;
        self
    }

    fn set_group(&self, pgid: Option<Pid>) {
        if let Ok(mut g) = self.group.lock() {
            *g = pgid;
        }
    }

    async fn end_session(&self, session: BashSession) {
        self.set_group(None);
        session.terminate(self.kill_grace).await;
    }

    async fn start_session(&self) -> Result<BashSession, String> {
        let session = BashSession::start(
            &self.working_dir,
            self.sandbox.as_ref(),
            self.observer.clone(),
        )
        .await
        .map_err(|e| {
            format!(
                "Error starting bash session in {}: {e}",
                self.working_dir.display()
            )
        })?;
        self.set_group(Some(session.pgid));
        Ok(session)
    }

    /// The model's view of how a command ended.
    async fn command_output(
        &self,
        mut slot: tokio::sync::MutexGuard<'_, Option<BashSession>>,
        end: RunEnd,
        note: String,
    ) -> ToolOutput {
        match end {
            RunEnd::Finished { output, exit_code } => {
                let output = format!("{note}{output}");
                if exit_code == 0 {
                    ToolOutput::ok(output)
                } else {
                    ToolOutput::partial(
                        output,
                        format!("The command exited with code {exit_code}."),
                    )
                }
            }
            RunEnd::TimedOut { output } => {
                // Keep Trae's contract (restart required) but free the machine now.
                if let Some(session) = slot.as_mut() {
                    session.timed_out = true;
                    terminate_group(session.pgid, self.kill_grace, || {}).await;
                }
                ToolOutput::partial(format!("{note}{output}"), self.timeout_message())
            }
            RunEnd::ShellExited { output, exit_code } => {
                if let Some(old) = slot.take() {
                    self.end_session(old).await;
                }
                let code = exit_code.map_or_else(|| "unknown".to_string(), |c| c.to_string());
                ToolOutput::partial(
                    format!("{note}{output}"),
                    format!(
                        "bash has exited with returncode {code}. A new session starts with the next command; \
                         shell state (current directory, variables) was lost."
                    ),
                )
            }
            RunEnd::Io(e) => {
                if let Some(old) = slot.take() {
                    self.end_session(old).await;
                }
                ToolOutput::error(format!("Error running bash command: {e}"))
            }
        }
    }

    fn timeout_message(&self) -> String {
        format!(
            "timed out: bash has not returned in {} seconds and must be restarted (call bash with `restart: true`)",
            self.timeout.as_secs_f64()
        )
    }
}

#[async_trait]
impl Tool for BashTool {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn call(&self, args: &Args) -> ToolOutput {
        let restart = match optional_bool(args, "restart") {
            Ok(r) => r.unwrap_or(false),
            Err(e) => return ToolOutput::error(e),
        };
        let mut slot = self.session.lock().await;
        if restart {
            if let Some(old) = slot.take() {
                self.end_session(old).await;
            }
            return match self.start_session().await {
                Ok(s) => {
                    *slot = Some(s);
                    ToolOutput::ok("tool has been restarted.")
                }
                Err(e) => ToolOutput::error(e),
            };
        }
        let command = match required_str(args, "command") {
            Ok(c) => c,
            Err(_) => {
                return ToolOutput::error(
                    "No command provided for the bash tool (parameter `command`)",
                );
            }
        };
        if let Some(problem) = syntax_error(command).await {
            return ToolOutput::error(format!(
                "bash could not parse the command, nothing was run:\n{problem}"
            ));
        }

        let mut note = String::new();
        match slot.as_ref() {
            Some(s) if s.timed_out => return ToolOutput::error(self.timeout_message()),
            // The caller of the previous command went away mid-command (the
            // step was cancelled): its output would leak into this answer.
            Some(s) if s.busy => {
                if let Some(old) = slot.take() {
                    self.end_session(old).await;
                }
                note = "(The previous command was interrupted; the bash session was restarted and its state reset.)\n"
                    .into();
            }
            _ => {}
        }
        if slot.is_none() {
            match self.start_session().await {
                Ok(s) => *slot = Some(s),
                Err(e) => return ToolOutput::error(e),
            }
        }
        let Some(session) = slot.as_mut() else {
            return ToolOutput::error("Error starting bash session");
        };

        let end = session.run(command, self.timeout).await;
        let output = self.command_output(slot, end, note).await;
        // An OOM kill always fails the command (or the shell), so a command
        // that succeeded costs no read of the group's counters.
        let notice = output
            .error
            .as_ref()
            .and_then(|_| self.observer.as_ref()?.limit_notice());
        match notice {
            Some(notice) => output.with_error_note(&notice),
            None => output,
        }
    }
    async fn shutdown(&self) {
        // A command in progress holds the session lock: signal its group first
        // so that it ends and lets go.
        let pgid = self.group.lock().ok().and_then(|g| *g);
        if let Some(pgid) = pgid {
            signal_group(pgid, Signal::SIGTERM);
        }
        match tokio::time::timeout(
            self.kill_grace + Duration::from_secs(1),
            self.session.lock(),
        )
        .await
        {
            Ok(mut slot) => {
                if let Some(session) = slot.take() {
                    self.end_session(session).await;
                }
            }
            Err(_) => {
                if let Some(pgid) = pgid {
                    signal_group(pgid, Signal::SIGKILL);
                }
            }
        }
        self.set_group(None);
    }
}

/// Asks `bash -n` whether the command parses: an unterminated quote or
/// here-document would otherwise swallow the sentinel and hang until the
/// timeout. `extglob` is on so that `!(pattern)` globs parse.
async fn syntax_error(command: &str) -> Option<String> {
    let mut child = Command::new("bash")
        .args(["-O", "extglob", "-n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let script = command.to_string();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(script.as_bytes()).await;
    });
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    let _ = writer.await;
    if out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stderr)
        .trim()
        .replace("bash: line ", "line ");
    Some(clip_middle(&text, 2_000, 0))
}

enum RunEnd {
    Finished {
        output: String,
        exit_code: i32,
    },
    TimedOut {
        output: String,
    },
    ShellExited {
        output: String,
        exit_code: Option<i32>,
    },
    Io(std::io::Error),
}

struct BashSession {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    pgid: Pid,
    /// The group as reported to the observer (told when it ends).
    group: ProcessGroup,
    observer: Option<Arc<dyn ProcessObserver>>,
    /// Marker text that ends each command's output.
    marker: String,
    marker_parts: (String, String),
    /// A command was sent and its end not yet read.
    busy: bool,
    timed_out: bool,
    /// The group was terminated: nothing to kill on drop (and its id may be reused).
    ended: bool,
}

static SESSION_COUNTER: AtomicU64 = AtomicU64::new(0);

impl BashSession {
    async fn start(
        working_dir: &Path,
        sandbox: Option<&BashSandbox>,
        observer: Option<Arc<dyn ProcessObserver>>,
    ) -> std::io::Result<Self> {
        let mut cmd = match sandbox {
            Some(sandbox) => {
                let mut cmd = Command::new(&sandbox.program);
                cmd.args(sandbox.args(working_dir)).arg("bash");
                cmd
            }
            None => Command::new("bash"),
        };
        cmd.current_dir(working_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Redirected into stdout by the first line we send (one stream, in order).
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .env("PAGER", "cat")
            .env("GIT_PAGER", "cat");
        // The model must not be able to read the service's provider keys.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(is_secret_env) {
                cmd.env_remove(key);
            }
        }
        if let Some(observer) = &observer {
            join_cgroups_on_spawn(&mut cmd, observer.cgroup_procs());
        }
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("bash exited at once"))?;
        let pgid = Pid::from_raw(pid as i32);
        let group = ProcessGroup {
            pgid: pid as i32,
            start_time: process_start_time(pid as i32).unwrap_or(0),
        };
        // Recorded before any command runs: a crash from here on leaves a
        // record by which the next start ends the group.
        if let Some(observer) = &observer
            && let Err(e) = observer.group_started(group).await
        {
            signal_group(pgid, Signal::SIGKILL);
            return Err(std::io::Error::other(format!(
                "could not record the shell's process group, so nothing was run: {e}"
            )));
        }
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            signal_group(pgid, Signal::SIGKILL);
            if let Some(observer) = &observer {
                observer.group_ended(group);
            }
            return Err(std::io::Error::other("bash pipes were not created"));
        };
        let nonce = format!(
            "{}_{}_{}",
            std::process::id(),
            SESSION_COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        // The marker is printed from two pieces so that even `set -x` tracing
        // of the sentinel line never contains it whole.
        let marker_parts = ("__AGENTD_".to_string(), format!("CMD_END_{nonce}__"));
        let marker = format!("\n{}{}", marker_parts.0, marker_parts.1);
        let mut session = Self {
            child,
            stdin,
            stdout,
            pgid,
            group,
            observer,
            marker,
            marker_parts,
            busy: false,
            timed_out: false,
            ended: false,
        };
        // On failure, dropping the session ends the group and reports it.
        session.write(b"exec 2>&1\n").await?;
        Ok(session)
    }

    async fn run(&mut self, command: &str, timeout: Duration) -> RunEnd {
        // `{ ...; }` runs in this shell (so `cd` persists); stdin is /dev/null
        // so that a command reading input cannot eat the sentinel line.
        let script = format!(
            "{{\n{command}\n}} < /dev/null\nprintf '\\n%s%s%s\\n' '{}' '{}' \"$?\"\n",
            self.marker_parts.0, self.marker_parts.1
        );
        self.busy = true;
        if let Err(e) = self.write(script.as_bytes()).await {
            return match e.kind() {
                std::io::ErrorKind::BrokenPipe => RunEnd::ShellExited {
                    output: String::new(),
                    exit_code: self.exit_code().await,
                },
                _ => RunEnd::Io(e),
            };
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut capture = Capture::default();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let read = match tokio::time::timeout_at(deadline, self.stdout.read(&mut chunk)).await {
                Err(_) => {
                    return RunEnd::TimedOut {
                        output: capture.into_text(),
                    };
                }
                Ok(r) => r,
            };
            match read {
                Ok(0) => {
                    let exit_code = self.exit_code().await;
                    return RunEnd::ShellExited {
                        output: capture.into_text(),
                        exit_code,
                    };
                }
                Ok(n) => {
                    capture.push(&chunk[..n]);
                    if let Some(exit_code) = capture.take_end(&self.marker) {
                        self.busy = false;
                        return RunEnd::Finished {
                            output: capture.into_text(),
                            exit_code,
                        };
                    }
                }
                Err(e) => return RunEnd::Io(e),
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stdin.write_all(bytes).await?;
        self.stdin.flush().await
    }

    /// The shell's exit code once it has gone (it closed its stdout).
    async fn exit_code(&mut self) -> Option<i32> {
        match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => None,
        }
    }

    async fn terminate(mut self, grace: Duration) {
        let pgid = self.pgid;
        let child = &mut self.child;
        terminate_group(pgid, grace, || {
            let _ = child.try_wait();
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await;
        self.ended = true;
    }
}

impl Drop for BashSession {
    fn drop(&mut self) {
        // kill_on_drop ends only bash itself; its children share the group.
        if !self.ended {
            signal_group(self.pgid, Signal::SIGKILL);
        }
        if let Some(observer) = &self.observer {
            observer.group_ended(self.group);
        }
    }
}

/// Output of one command. Past `CAPTURE_HEAD_BYTES + 2 * CAPTURE_TAIL_BYTES`
/// the middle is counted and dropped, keeping the head and the latest bytes
/// (where the end marker will appear).
#[derive(Default)]
struct Capture {
    buf: Vec<u8>,
    dropped: usize,
}

impl Capture {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > CAPTURE_HEAD_BYTES + 2 * CAPTURE_TAIL_BYTES {
            let end = self.buf.len() - CAPTURE_TAIL_BYTES;
            self.buf.drain(CAPTURE_HEAD_BYTES..end);
            self.dropped += end - CAPTURE_HEAD_BYTES;
        }
    }

    /// Finds the end marker followed by the exit code and a newline among the
    /// latest bytes; removes them and returns the code.
    fn take_end(&mut self, marker: &str) -> Option<i32> {
        let marker = marker.as_bytes();
        let from = self.buf.len().saturating_sub(CAPTURE_TAIL_BYTES);
        let start = from + find_last(&self.buf[from..], marker)?;
        let rest = &self.buf[start + marker.len()..];
        let newline = rest.iter().position(|&b| b == b'\n')?;
        let code = std::str::from_utf8(&rest[..newline])
            .ok()?
            .trim()
            .parse()
            .ok()?;
        self.buf.truncate(start);
        Some(code)
    }

    /// The text for the model, without the one final newline (as Trae does).
    fn into_text(mut self) -> String {
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        clip_middle(
            &String::from_utf8_lossy(&self.buf),
            MAX_RESPONSE_CHARS,
            self.dropped,
        )
    }
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// Environment variables a command must not see: the service's provider keys.
fn is_secret_env(key: &str) -> bool {
    key.ends_with("_API_KEY")
}

#[cfg(test)]
mod tests {
    use super::super::process_group::process_is_alive;
    use super::*;
    use serde_json::Value;

    fn tool(dir: &Path) -> BashTool {
        BashTool::new(
            dir.to_path_buf(),
            Duration::from_secs(30),
            Duration::from_millis(500),
        )
    }

    fn args(v: Value) -> Args {
        v.as_object().cloned().unwrap_or_default()
    }

    async fn run(t: &BashTool, cmd: &str) -> ToolOutput {
        t.call(&args(json!({ "command": cmd }))).await
    }

    #[tokio::test]
    async fn runs_in_working_dir_and_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let t = tool(dir.path());
        let out = run(&t, "pwd").await;
        assert_eq!(
            out.output,
            dir.path().canonicalize().unwrap().display().to_string()
        );
        assert!(out.error.is_none());
        run(&t, "cd sub && export FOO=bar").await;
        let out = run(&t, "echo \"$(basename $PWD) $FOO\"").await;
        assert_eq!(out.output, "sub bar");
        t.shutdown().await;
    }

    #[tokio::test]
    async fn merges_stderr_and_reports_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(dir.path());
        let out = run(&t, "echo out; echo err >&2; false").await;
        assert_eq!(out.output, "out\nerr");
        assert_eq!(
            out.error.as_deref(),
            Some("The command exited with code 1.")
        );
        let out = run(&t, "printf 'no newline'").await;
        assert_eq!(out.output, "no newline");
        // Reading stdin gets EOF instead of the sentinel line.
        let out = run(&t, "cat; echo after").await;
        assert_eq!(out.output, "after");
        t.shutdown().await;
    }

    #[tokio::test]
    async fn syntax_errors_are_reported_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(dir.path());
        let out = run(&t, "echo \"unterminated").await;
        assert!(
            out.error
                .as_deref()
                .unwrap_or("")
                .contains("could not parse"),
            "{out:?}"
        );
        let out = run(&t, "echo fine").await;
        assert_eq!(out.output, "fine");
        t.shutdown().await;
    }

    #[tokio::test]
    async fn long_output_is_clipped_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(dir.path());
        let out = run(&t, "seq 1 200000").await;
        assert!(out.output.contains("<response clipped:"), "no marker");
        assert!(out.output.starts_with("1\n2\n3\n"));
        assert!(out.output.ends_with("199999\n200000"));
        assert!(out.output.chars().count() < MAX_RESPONSE_CHARS + 200);
        // The session is still usable afterwards.
        assert_eq!(run(&t, "echo ok").await.output, "ok");
        t.shutdown().await;
    }

    #[tokio::test]
    async fn timeout_kills_the_command_and_requires_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = BashTool::new(
            dir.path().to_path_buf(),
            Duration::from_millis(700),
            Duration::from_millis(300),
        );
        let out = run(&t, "echo started; sleep 300 & echo $! > bg.pid; sleep 301").await;
        assert_eq!(out.output, "started");
        assert!(
            out.error
                .as_deref()
                .unwrap_or("")
                .starts_with("timed out: bash has not returned"),
            "{out:?}"
        );
        let pid: i32 = std::fs::read_to_string(dir.path().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !process_is_alive(pid),
            "background sleep survived the timeout"
        );

        let out = run(&t, "echo again").await;
        assert!(
            out.error
                .as_deref()
                .unwrap_or("")
                .contains("must be restarted")
        );
        let out = t
            .call(&args(json!({ "command": "", "restart": true })))
            .await;
        assert_eq!(out.output, "tool has been restarted.");
        assert_eq!(run(&t, "echo again").await.output, "again");
        t.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(dir.path());
        let out = run(&t, "sleep 300 > /dev/null 2>&1 & echo $!").await;
        let pid: i32 = out.output.trim().parse().unwrap();
        assert!(process_is_alive(pid));
        // A child that ignores SIGTERM still ends (SIGKILL after the grace).
        let out = run(
            &t,
            "bash -c 'trap \"\" TERM; sleep 300' > /dev/null 2>&1 & echo $!",
        )
        .await;
        let stubborn: i32 = out.output.trim().parse().unwrap();
        t.shutdown().await;
        assert!(!process_is_alive(pid), "sleep survived shutdown");
        assert!(
            !process_is_alive(stubborn),
            "TERM-ignoring child survived shutdown"
        );
    }

    #[tokio::test]
    async fn dropping_the_tool_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(dir.path());
        let pid: i32 = run(&t, "sleep 300 > /dev/null 2>&1 & echo $!")
            .await
            .output
            .trim()
            .parse()
            .unwrap();
        drop(t);
        let mut alive = true;
        for _ in 0..100 {
            alive = process_is_alive(pid);
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive, "sleep survived drop");
    }

    #[tokio::test]
    async fn interrupted_command_restarts_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(dir.path());
        let fut = run(&t, "echo $$ > shell.pid; sleep 300");
        assert!(
            tokio::time::timeout(Duration::from_millis(500), fut)
                .await
                .is_err()
        );
        let out = run(&t, "echo next").await;
        assert!(out.output.ends_with("next"));
        assert!(out.output.contains("interrupted"));
        let old_shell: i32 = std::fs::read_to_string(dir.path().join("shell.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!process_is_alive(old_shell));
        t.shutdown().await;
    }

    #[tokio::test]
    async fn exit_ends_the_session_and_the_next_command_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let t = tool(dir.path());
        let out = run(&t, "echo bye; exit 3").await;
        assert_eq!(out.output, "bye");
        assert!(
            out.error.as_deref().unwrap_or("").contains("returncode 3"),
            "{out:?}"
        );
        assert_eq!(run(&t, "echo hi").await.output, "hi");
        t.shutdown().await;
    }

    /// Remembers what it was told; can be made to refuse new groups.
    #[derive(Debug, Default)]
    struct Recorder {
        started: StdMutex<Vec<ProcessGroup>>,
        ended: StdMutex<Vec<ProcessGroup>>,
        refuse: bool,
    }

    #[async_trait]
    impl ProcessObserver for Recorder {
        async fn group_started(&self, group: ProcessGroup) -> std::io::Result<()> {
            if self.refuse {
                return Err(std::io::Error::other("disk full"));
            }
            self.started.lock().unwrap().push(group);
            Ok(())
        }
        fn group_ended(&self, group: ProcessGroup) {
            self.ended.lock().unwrap().push(group);
        }
    }

    #[tokio::test]
    async fn the_observer_hears_of_every_group_before_it_runs_anything() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recorder::default());
        let t = tool(dir.path()).supervised(Some(rec.clone()), None);
        let pid: i32 = run(&t, "echo $$").await.output.trim().parse().unwrap();
        let first = rec.started.lock().unwrap().clone();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].pgid, pid);
        assert_eq!(Some(first[0].start_time), process_start_time(pid));
        assert!(rec.ended.lock().unwrap().is_empty());
        // A restart ends one group and starts another.
        t.call(&args(json!({ "command": "", "restart": true })))
            .await;
        assert_eq!(rec.started.lock().unwrap().len(), 2);
        assert_eq!(*rec.ended.lock().unwrap(), first);
        t.shutdown().await;
        assert_eq!(*rec.ended.lock().unwrap(), *rec.started.lock().unwrap());
        // Dropped without shutdown: the group is still reported as ended.
        let t = tool(dir.path()).supervised(Some(rec.clone()), None);
        run(&t, "true").await;
        drop(t);
        assert_eq!(*rec.ended.lock().unwrap(), *rec.started.lock().unwrap());
    }

    #[tokio::test]
    async fn nothing_runs_when_the_group_cannot_be_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Arc::new(Recorder {
            refuse: true,
            ..Recorder::default()
        });
        let t = tool(dir.path()).supervised(Some(rec), None);
        let out = run(&t, "touch ran").await;
        assert!(
            out.error
                .as_deref()
                .unwrap_or("")
                .contains("could not record"),
            "{out:?}"
        );
        assert!(!dir.path().join("ran").exists());
    }

    #[tokio::test]
    async fn sandboxed_bash_writes_only_its_working_dir() {
        let sandbox = BashSandbox::new(false);
        if let Err(why) = sandbox.probe().await {
            eprintln!("bubblewrap is not usable here, skipping: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let wd = dir.path().join("wd");
        let hidden = dir.path().join("hidden");
        std::fs::create_dir_all(&wd).unwrap();
        std::fs::create_dir_all(&hidden).unwrap();
        std::fs::write(hidden.join("secret"), "s3cret").unwrap();
        let sandbox = BashSandbox {
            hidden: vec![hidden.clone()],
            ..sandbox
        };
        let t = tool(&wd).supervised(None, Some(sandbox));
        let out = run(&t, "echo $$ > pid; pwd; echo hi > mine.txt && echo wrote").await;
        assert!(out.output.ends_with("wrote"), "{out:?}");
        assert!(wd.join("mine.txt").exists());
        // $$ is a host pid (no PID namespace), so process bookkeeping holds.
        let pid: i32 = std::fs::read_to_string(wd.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(process_is_alive(pid));
        // Outside the working directory: read-only, and /tmp is private.
        let outside = std::env::current_dir()
            .unwrap()
            .join(format!("sandbox-probe-{}", std::process::id()));
        let out = run(&t, &format!("touch {} 2>&1; echo rc=$?", outside.display())).await;
        let created = outside.exists();
        let _ = std::fs::remove_file(&outside);
        // "Read-only file system", or "No such file or directory" when the
        // checkout itself lies under the host's /tmp (private in the sandbox).
        assert!(out.output.ends_with("rc=1") && !created, "{out:?}");
        run(&t, &format!("touch {}/x", dir.path().display())).await;
        assert!(!dir.path().join("x").exists());
        let out = run(&t, &format!("ls -A {}", hidden.display())).await;
        assert_eq!(out.output, "", "{out:?}");
        t.shutdown().await;
        assert!(!process_is_alive(pid));
    }

    #[test]
    fn provider_keys_are_kept_from_commands() {
        assert!(is_secret_env("OPENAI_API_KEY"));
        assert!(!is_secret_env("PATH"));
    }

    #[test]
    fn capture_finds_marker_and_drops_middle() {
        let marker = "\n__AGENTD_CMD_END_x__";
        let mut c = Capture::default();
        c.push(b"hello\n__AGENTD_CMD_END_x");
        assert_eq!(c.take_end(marker), None);
        c.push(b"__7\n");
        assert_eq!(c.take_end(marker), Some(7));
        assert_eq!(c.into_text(), "hello");

        let mut c = Capture::default();
        let line = vec![b'x'; 1000];
        for _ in 0..1000 {
            c.push(&line);
        }
        c.push(b"\n__AGENTD_CMD_END_x__0\n");
        assert_eq!(c.take_end(marker), Some(0));
        assert!(c.buf.len() <= CAPTURE_HEAD_BYTES + 2 * CAPTURE_TAIL_BYTES);
        assert!(c.into_text().contains("<response clipped:"));
    }
}
