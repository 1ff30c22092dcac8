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

/// State, process group and start time (field 22 of `/proc/<pid>/stat`:
/// clock ticks after boot) of one process.
fn parse_stat(stat: &str) -> Option<ProcStat> {
    let (state, pgrp) = parse_state_and_pgrp(stat)?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow the `)`; field 22 is the 20th of them.
    let start_time = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_time,
    })
}

struct ProcStat {
    state: char,
    pgrp: i32,
    start_time: u64,
}

impl ProcStat {
    fn is_live(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// When process `pid` started, in clock ticks after boot (`/proc/<pid>/stat`
/// field 22); `None` without `/proc` or once the process is gone. Together
/// with the pid it names one process for good: a reused pid starts later.
pub fn process_start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|s| s.start_time)
}

/// A process group the tools started: its id (the pid of its first process)
/// and that process's start time (see [`process_start_time`]; 0 if unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessGroup {
    pub pgid: i32,
    pub start_time: u64,
}

/// Told when the tools start and end a process group, so that a supervisor
/// can keep a durable record and end groups that outlive their agentd (a
/// crash or SIGKILL gives the tools no chance to clean up).
#[async_trait::async_trait]
pub trait ProcessObserver: Send + Sync + std::fmt::Debug {
    /// A group was started; nothing runs in it until this returns. An error
    /// (the record could not be written) ends the group and fails the call.
    async fn group_started(&self, group: ProcessGroup) -> std::io::Result<()>;
    /// Every process of the group was ended (or sent SIGKILL).
    fn group_ended(&self, group: ProcessGroup);
    /// `cgroup.procs` files (one per hierarchy) that a group's first
    /// process joins between fork and exec, so that everything it starts,
    /// including what leaves the process group (`setsid`, daemons), is
    /// accounted to the task and killed with it. Empty: no control group.
    fn cgroup_procs(&self) -> Vec<std::ffi::CString> {
        Vec::new()
    }
    /// A resource limit the task's processes hit since the last call (an
    /// OOM kill), in words for the model; asked after every failed command.
    fn limit_notice(&self) -> Option<String> {
        None
    }
}

/// Makes the child of `cmd` join each of `procs` (`cgroup.procs` files)
/// before it execs; a failed join fails the spawn, so nothing runs outside
/// its task's group.
pub fn join_cgroups_on_spawn(cmd: &mut tokio::process::Command, procs: Vec<std::ffi::CString>) {
    if procs.is_empty() {
        return;
    }
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (open, write, close on paths allocated before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for path in &procs {
                let fd = nix::libc::open(path.as_ptr(), nix::libc::O_WRONLY | nix::libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" names the writing process itself.
                let written = nix::libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                nix::libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
}

/// What ending a recorded group found (see [`end_recorded_group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCleanup {
    /// Nothing of the group runs any more (or its id now names someone else's group).
    Gone,
    /// This many of its processes were running and were ended.
    Ended { processes: usize },
    /// Processes that were still alive after SIGKILL had time to act.
    Survived { pids: Vec<i32> },
    /// Without `/proc` or a recorded start time, the group's processes
    /// cannot be told from whoever reused its ids; nothing was signalled.
    Unverifiable,
}

/// The live processes of a recorded group, and whether its leader (the
/// recorded process itself) still exists. A process counts only if it is in
/// group `pgid` and started no earlier than the leader did: once the leader
/// and every member are gone the kernel may hand the id to a new process,
/// which then starts later than the recorded one and has another start time.
/// `None` when `/proc` cannot be read.
fn recorded_members(group: ProcessGroup) -> Option<(Vec<i32>, bool)> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut members = Vec::new();
    let mut leader_matches = false;
    let mut saw_any_process = false;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        saw_any_process = true;
        let Some(stat) = read_stat(pid) else { continue };
        if pid == group.pgid {
            if stat.start_time != group.start_time {
                // The id was reused: the recorded group is gone (a group
                // keeps its id reserved while any member lives).
                return Some((Vec::new(), false));
            }
            leader_matches = true;
        }
        if stat.pgrp == group.pgid && stat.is_live() && stat.start_time >= group.start_time {
            members.push(pid);
        }
    }
    saw_any_process.then_some((members, leader_matches))
}

fn signal_members(group: ProcessGroup, members: &[i32], leader_matches: bool, signal: Signal) {
    if leader_matches {
        signal_group(Pid::from_raw(group.pgid), signal);
        return;
    }
    // No verified leader: signal only the processes checked above.
    for &pid in members {
        match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => tracing::warn!(pid, %signal, %err, "could not signal process"),
        }
    }
}

/// Ends a recorded group: SIGTERM (and SIGCONT), then SIGKILL after
/// `grace`, to the processes that provably belong to it (see
/// [`ProcessGroup`]). A stop uses it on the groups of a running task, and
/// the start on the groups a previous agentd left behind, before anything
/// new runs.
pub async fn end_recorded_group(group: ProcessGroup, grace: Duration) -> GroupCleanup {
    if group.start_time == 0 || group.pgid <= 1 {
        return GroupCleanup::Unverifiable;
    }
    let Some((members, leader)) = recorded_members(group) else {
        return GroupCleanup::Unverifiable;
    };
    if members.is_empty() {
        return GroupCleanup::Gone;
    }
    let found = members.len();
    signal_members(group, &members, leader, Signal::SIGTERM);
    signal_members(group, &members, leader, Signal::SIGCONT);
    let mut killed = false;
    let term_deadline = tokio::time::Instant::now() + grace;
    let kill_deadline = term_deadline + KILL_SETTLE;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let Some((left, leader)) = recorded_members(group) else {
            return GroupCleanup::Unverifiable;
        };
        if left.is_empty() {
            return GroupCleanup::Ended { processes: found };
        }
        let now = tokio::time::Instant::now();
        if !killed && now >= term_deadline {
            signal_members(group, &left, leader, Signal::SIGKILL);
            killed = true;
        } else if killed && now >= kill_deadline {
            return GroupCleanup::Survived { pids: left };
        } else if killed {
            // Members forked meanwhile get the same treatment.
            signal_members(group, &left, leader, Signal::SIGKILL);
        }
    }
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
    fn reads_start_time_from_field_22() {
        let stat = "4242 (my (odd) cmd) S 1 4240 4240 0 -1 4194560 10 0 0 0 5 6 0 0 20 0 1 0 987654 1000 10";
        let parsed = parse_stat(stat).unwrap();
        assert_eq!(
            (parsed.state, parsed.pgrp, parsed.start_time),
            ('S', 4240, 987654)
        );
        let me = std::process::id() as i32;
        assert!(process_start_time(me).is_some_and(|t| t > 0));
        assert_eq!(process_start_time(i32::MAX - 7), None);
    }

    #[tokio::test]
    async fn orphaned_group_is_ended_only_when_its_start_time_matches() {
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 300 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start_time = process_start_time(pid).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // `sleep` has started
        // Another start time: the pid names someone else; nothing is signalled.
        let other = ProcessGroup {
            pgid: pid,
            start_time: start_time + 1,
        };
        assert_eq!(
            end_recorded_group(other, Duration::from_millis(100)).await,
            GroupCleanup::Gone
        );
        assert!(process_is_alive(pid));
        assert_eq!(
            end_recorded_group(
                ProcessGroup {
                    pgid: pid,
                    start_time: 0
                },
                Duration::ZERO
            )
            .await,
            GroupCleanup::Unverifiable
        );
        // The recorded group: its shell ignores SIGTERM, so SIGKILL ends it.
        let group = ProcessGroup {
            pgid: pid,
            start_time,
        };
        let reaper = std::thread::spawn(move || child.wait());
        let outcome = end_recorded_group(group, Duration::from_millis(200)).await;
        assert!(
            matches!(outcome, GroupCleanup::Ended { processes } if processes >= 2),
            "{outcome:?}"
        );
        reaper.join().unwrap().unwrap();
        assert_eq!(
            end_recorded_group(group, Duration::ZERO).await,
            GroupCleanup::Gone
        );
    }

    #[test]
    fn own_process_is_alive_and_bogus_pid_is_not() {
        assert!(process_is_alive(std::process::id() as i32));
        assert!(!process_is_alive(i32::MAX - 7));
    }
}
