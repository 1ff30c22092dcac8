//! Ending every process a tool started: the whole process group, SIGTERM
//! first, SIGKILL after a short grace.
//!
//! Liveness is judged from `/proc` where it exists, because a zombie still
//! counts as a group member for `kill(2)`, and the init of many containers
//! never reaps the orphans a killed shell leaves behind: waiting for
//! `killpg(pgid, 0)` to fail would always burn the whole grace there.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How often a terminating group is checked for surviving members.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long SIGKILL may take to show (a process in uninterruptible sleep can
/// take a while; we do not wait for it forever).
const KILL_SETTLE: Duration = Duration::from_secs(2);

/// Sends `signal` to every process of group `pgid`; a group already gone is fine.
pub(crate) fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => {
            tracing::warn!(pgid = pgid.as_raw(), %signal, %err, "could not signal process group")
        }
    }
}

/// Whether group `pgid` still has a member that is not a zombie.
pub(crate) fn group_is_alive(pgid: Pid) -> bool {
    match live_members_from_proc(pgid) {
        Some(alive) => alive,
        None => !matches!(killpg(pgid, None), Err(Errno::ESRCH)),
    }
}

/// Scans `/proc/<pid>/stat` for a member of `pgid` that is not a zombie.
/// `None` when `/proc` is not available (not Linux, or not mounted).
fn live_members_from_proc(pgid: Pid) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut saw_any_process = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        saw_any_process = true;
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // exited while we looked
        };
        if let Some((state, pgrp)) = parse_state_and_pgrp(&stat)
            && pgrp == pgid.as_raw()
            && state != 'Z'
            && state != 'X'
        {
            return Some(true);
        }
    }
    saw_any_process.then_some(false)
}

/// `/proc/<pid>/stat` is `pid (comm) state ppid pgrp ...`; `comm` may hold
/// spaces and parentheses, so fields are read after the last `)`.
fn parse_state_and_pgrp(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether process `pid` exists and is not a zombie (used by tests and
/// diagnostics; a zombie has already released everything but its pid).
pub fn process_is_alive(pid: i32) -> bool {
    if nix::sys::signal::kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            parse_state_and_pgrp(&stat).is_some_and(|(state, _)| state != 'Z' && state != 'X')
        }
        Err(_) => false,
    }
}

/// SIGTERM to the group, then SIGKILL to whatever is left after `grace`.
/// `reap` is called while waiting so the caller can collect its direct child
/// (the group leader) as soon as it exits.
pub(crate) async fn terminate_group(pgid: Pid, grace: Duration, mut reap: impl FnMut()) {
    signal_group(pgid, Signal::SIGTERM);
    // A stopped process only acts on SIGTERM once continued.
    signal_group(pgid, Signal::SIGCONT);
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        reap();
        if !group_is_alive(pgid) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    signal_group(pgid, Signal::SIGKILL);
    // Signals are delivered asynchronously: wait (briefly) until the kill has
    // taken effect, so callers can rely on the processes being gone.
    let deadline = tokio::time::Instant::now() + KILL_SETTLE;
    while group_is_alive(pgid) && tokio::time::Instant::now() < deadline {
        reap();
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "4242 (my (odd) cmd) S 1 4240 4240 0 -1 4194560 0";
        assert_eq!(parse_state_and_pgrp(stat), Some(('S', 4240)));
        assert_eq!(parse_state_and_pgrp("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_bogus_pid_is_not() {
        assert!(process_is_alive(std::process::id() as i32));
        assert!(!process_is_alive(i32::MAX - 7));
    }
}
