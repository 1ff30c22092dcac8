//! A durable record of the process groups each task's tools are running, so
//! that what a crash (SIGKILL, power loss of the service alone) leaves behind
//! is ended on the next start.
//!
//! One small file per task, `<data dir>/run/<task_id>.pids`, rewritten
//! atomically (temporary file, fsync, rename, fsync of the directory) before
//! a group runs anything and again when a group ends; removed when the task
//! has none left. Each group is recorded with the start time of its first
//! process and the machine's boot id, so a pid reused since (or a record
//! from an earlier boot) is never signalled.
//!
//! `PR_SET_PDEATHSIG` is not used instead: it fires when the thread that
//! spawned the child exits (any tokio worker thread), and it reaches only the
//! direct child, never the commands it runs in the background.

use std::{
    collections::{BTreeSet, HashMap},
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use super::cgroups::{CgroupLimits, Cgroups, TaskCgroup};
use agentd_engine::tools::{GroupCleanup, ProcessGroup, ProcessObserver, end_recorded_group};
use anyhow::Context as _;

/// Between SIGTERM and SIGKILL for groups found on start.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(1);
const SUFFIX: &str = "pids";

/// The record directory of one data directory, and the record of each
/// task whose tools are alive in this process (what a stop ends).
#[derive(Debug, Clone)]
pub struct ProcessRecords {
    dir: PathBuf,
    boot_id: String,
    live: Arc<Mutex<HashMap<String, Weak<Record>>>>,
    cgroups: Cgroups,
}

/// What `end_orphans` found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrphanReport {
    /// Task records found (each from a run a previous agentd did not finish).
    pub records: usize,
    /// Groups that still had processes, and were ended.
    pub groups_ended: usize,
    pub processes_ended: usize,
    /// Pids still alive after SIGKILL (e.g. stuck in uninterruptible sleep).
    pub survivors: Vec<i32>,
    pub elapsed: Duration,
}

impl ProcessRecords {
    #[cfg(test)]
    pub fn open(data_dir: &Path, cgroups: Cgroups) -> anyhow::Result<Self> {
        Self::open_for_node(data_dir, None, cgroups)
    }

    /// The records of one node of several sharing `data_dir`
    /// (`run/<node id>/`): a node starting up ends only its own orphans.
    pub fn open_for_node(
        data_dir: &Path,
        node_id: Option<&str>,
        cgroups: Cgroups,
    ) -> anyhow::Result<Self> {
        let dir = match node_id {
            Some(node) => data_dir.join("run").join(node),
            None => data_dir.join("run"),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            boot_id: boot_id(),
            live: Arc::default(),
            cgroups,
        })
    }

    fn path(&self, task_id: &str) -> PathBuf {
        self.dir.join(format!("{task_id}.{SUFFIX}"))
    }

    /// The observer for one task's tools (every run or session of the task:
    /// they share the task's one record while any of them lives).
    /// A task's first run or session makes its control group with `limits`
    /// (checked by `Cgroups::limits_for`); later ones share it.
    pub fn observer(&self, task_id: &str, limits: &CgroupLimits) -> Arc<dyn ProcessObserver> {
        let mut live = self.live();
        live.retain(|_, record| record.strong_count() > 0);
        let record = match live.get(task_id).and_then(Weak::upgrade) {
            Some(record) => record,
            None => {
                let record = Arc::new(Record {
                    path: self.path(task_id),
                    dir: self.dir.clone(),
                    boot_id: self.boot_id.clone(),
                    groups: Mutex::new(BTreeSet::new()),
                    write: Mutex::new(()),
                    cgroup: self.cgroups.create(task_id, limits),
                    oom_told: Default::default(),
                    pids_told: Default::default(),
                });
                live.insert(task_id.to_string(), Arc::downgrade(&record));
                record
            }
        };
        Arc::new(TaskGroups(record))
    }

    /// Ends every process group the task's tools are running (SIGTERM,
    /// then SIGKILL after `grace`) and returns how many still had
    /// processes. The stop protocol calls this directly, so a stop does not
    /// depend on the agent noticing its cancellation; the tools find their
    /// groups gone and the agent ends the step as cancelled.
    pub async fn end_task(&self, task_id: &str, grace: Duration) -> usize {
        let record = self.live().get(task_id).and_then(Weak::upgrade);
        let Some(record) = record else { return 0 };
        let groups: Vec<ProcessGroup> = record.groups().iter().copied().collect();
        let ends = groups.into_iter().map(|g| end_recorded_group(g, grace));
        let mut ended = 0;
        let ends = futures_util::future::join_all(ends).await;
        // Then whatever left its process group (setsid, daemons).
        if let Some(cgroup) = record.cgroup.clone() {
            let _ = tokio::task::spawn_blocking(move || cgroup.kill()).await;
        }
        for outcome in ends {
            match outcome {
                GroupCleanup::Ended { .. } => ended += 1,
                GroupCleanup::Survived { pids } => {
                    tracing::error!(%task_id, ?pids, "processes of a stopped task survived SIGKILL");
                    ended += 1;
                }
                GroupCleanup::Gone | GroupCleanup::Unverifiable => {}
            }
        }
        ended
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Record>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends every recorded group that is still running (SIGTERM, then
    /// SIGKILL after `grace`), then removes the records. Runs on start,
    /// before any task runs; records of this boot that cannot be verified
    /// (no `/proc`) are left alone and removed.
    pub async fn end_orphans(&self, grace: Duration) -> anyhow::Result<OrphanReport> {
        let started = Instant::now();
        let mut report = OrphanReport::default();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == SUFFIX) {
                files.push(path);
            } else {
                // A temporary file of an interrupted rewrite.
                let _ = std::fs::remove_file(&path);
            }
        }
        let mut ends = Vec::new();
        for path in &files {
            report.records += 1;
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable process record");
                    continue;
                }
            };
            let (boot, groups) = parse(&text);
            if boot.as_deref() != Some(self.boot_id.as_str()) {
                continue; // an earlier boot: its processes are gone
            }
            let task_id = task_of(path);
            for group in groups {
                let task_id = task_id.clone();
                ends.push(async move { (task_id, group, end_recorded_group(group, grace).await) });
            }
        }
        for (task_id, group, outcome) in futures_util::future::join_all(ends).await {
            match outcome {
                GroupCleanup::Gone => {}
                GroupCleanup::Ended { processes } => {
                    report.groups_ended += 1;
                    report.processes_ended += processes;
                    tracing::warn!(%task_id, pgid = group.pgid, processes, "ended processes a previous agentd left running");
                }
                GroupCleanup::Survived { pids } => {
                    tracing::error!(%task_id, pgid = group.pgid, ?pids, "processes a previous agentd left running survived SIGKILL");
                    report.survivors.extend(pids);
                }
                GroupCleanup::Unverifiable => {
                    tracing::warn!(%task_id, pgid = group.pgid, "cannot verify a recorded process group (no /proc or no start time); left alone");
                }
            }
        }
        for path in &files {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a process record");
            }
        }
        if !files.is_empty() {
            sync_dir(&self.dir)?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// One task's groups, mirrored to its record file.
#[derive(Debug)]
struct TaskGroups(Arc<Record>);

#[derive(Debug)]
struct Record {
    path: PathBuf,
    dir: PathBuf,
    boot_id: String,
    groups: Mutex<BTreeSet<ProcessGroup>>,
    /// Held while the file is rewritten: each rewrite snapshots the set
    /// under it, so the last rewrite always carries the latest state.
    write: Mutex<()>,
    /// The task's control group: every process its tools start joins it.
    cgroup: Option<TaskCgroup>,
    /// OOM kills in the group the model has been told of.
    oom_told: std::sync::atomic::AtomicU64,
    /// Forks refused by the pids limit the model has been told of.
    pids_told: std::sync::atomic::AtomicU64,
}

impl Drop for Record {
    /// The task's tools are gone: so must be anything they left running.
    fn drop(&mut self) {
        let Some(cgroup) = self.cgroup.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || cgroup.remove());
            }
            Err(_) => cgroup.remove(),
        }
    }
}

impl Record {
    fn groups(&self) -> std::sync::MutexGuard<'_, BTreeSet<ProcessGroup>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the current set (or removes the file when it is empty).
    fn persist(&self) -> std::io::Result<()> {
        let _writing = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let groups: Vec<ProcessGroup> = self.groups().iter().copied().collect();
        if groups.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Ok(()) => sync_dir(&self.dir),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
        }
        let mut text = format!("boot {}\n", self.boot_id);
        for g in &groups {
            text.push_str(&format!("group {} {}\n", g.pgid, g.start_time));
        }
        let temp = self.path.with_extension(format!("{SUFFIX}.tmp"));
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, &self.path)?;
        sync_dir(&self.dir)
    }

    fn persist_logged(&self) {
        if let Err(e) = self.persist() {
            // A stale record is harmless: the next start finds the group gone.
            tracing::warn!(path = %self.path.display(), error = %e, "could not update a process record");
        }
    }
}

#[async_trait::async_trait]
impl ProcessObserver for TaskGroups {
    fn cgroup_procs(&self) -> Vec<std::ffi::CString> {
        self.0
            .cgroup
            .as_ref()
            .map(TaskCgroup::procs_files)
            .unwrap_or_default()
    }

    fn limit_notice(&self) -> Option<String> {
        use std::sync::atomic::Ordering::Relaxed;
        let cgroup = self.0.cgroup.as_ref()?;
        let kills = cgroup.oom_kills();
        let oom = (kills > self.0.oom_told.swap(kills, Relaxed)).then(|| {
            let limit = cgroup
                .memory_max
                .map_or_else(|| "its".into(), |b| format!("its {} MiB", b >> 20));
            format!(
                "The task reached {limit} memory limit: the kernel killed a process of the command (out of memory)."
            )
        });
        let refused = cgroup.pids_refusals();
        let pids = (refused > self.0.pids_told.swap(refused, Relaxed)).then(|| {
            let limit = cgroup
                .pids_max
                .map_or_else(|| "its".into(), |n| format!("its {n}"));
            format!(
                "The task reached {limit} process limit: the kernel refused to start more processes (fork failed)."
            )
        });
        match (oom, pids) {
            (Some(a), Some(b)) => Some(format!("{a} {b}")),
            (a, b) => a.or(b),
        }
    }

    async fn group_started(&self, group: ProcessGroup) -> std::io::Result<()> {
        self.0.groups().insert(group);
        let record = self.0.clone();
        let written = tokio::task::spawn_blocking(move || record.persist())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if written.is_err() {
            self.0.groups().remove(&group);
        }
        written
    }

    fn group_ended(&self, group: ProcessGroup) {
        if !self.0.groups().remove(&group) {
            return;
        }
        let record = self.0.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || record.persist_logged());
            }
            Err(_) => record.persist_logged(),
        }
    }
}

/// `boot <id>` and `group <pgid> <start_time>` lines; others are ignored.
fn parse(text: &str) -> (Option<String>, Vec<ProcessGroup>) {
    let mut boot = None;
    let mut groups = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("boot"), Some(id), None) => boot = Some(id.to_string()),
            (Some("group"), Some(pgid), Some(start)) => {
                if let (Ok(pgid), Ok(start_time)) = (pgid.parse(), start.parse()) {
                    groups.push(ProcessGroup { pgid, start_time });
                }
            }
            _ => {}
        }
    }
    (boot, groups)
}

fn task_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// This boot's id (Linux); elsewhere a constant, so records always match and
/// the start-time check alone guards against reuse.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;

    use agentd_engine::tools::{process_is_alive, process_start_time};

    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp_dir() -> Dir {
        let d = std::env::temp_dir().join(format!("agentd-procs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn spawn_group() -> (std::process::Child, ProcessGroup) {
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 300 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let group = ProcessGroup {
            pgid: pid,
            start_time: process_start_time(pid).unwrap(),
        };
        (child, group)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_follow_groups_and_are_removed_when_none_are_left() {
        let dir = temp_dir();
        let records = ProcessRecords::open(&dir.0, Cgroups::off("test")).unwrap();
        let obs = records.observer("task-1", &CgroupLimits::default());
        let a = ProcessGroup {
            pgid: 100,
            start_time: 7,
        };
        let b = ProcessGroup {
            pgid: 200,
            start_time: 9,
        };
        obs.group_started(a).await.unwrap();
        obs.group_started(b).await.unwrap();
        let path = dir.0.join("run/task-1.pids");
        let (boot, groups) = parse(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(boot.as_deref(), Some(boot_id().as_str()));
        assert_eq!(groups, vec![a, b]);
        obs.group_ended(a);
        obs.group_ended(b);
        for _ in 0..100 {
            if !path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!path.exists(), "record left after every group ended");
    }

    /// A stop ends the live groups of its task only, whichever of the
    /// task's observers started them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn end_task_ends_the_groups_of_that_task_only() {
        let dir = temp_dir();
        let records = ProcessRecords::open(&dir.0, Cgroups::off("test")).unwrap();
        let (mut child, group) = spawn_group();
        let (mut other, other_group) = spawn_group();
        let first = records.observer("stopped", &CgroupLimits::default());
        let second = records.observer("stopped", &CgroupLimits::default());
        let bystander = records.observer("bystander", &CgroupLimits::default());
        second.group_started(group).await.unwrap();
        bystander.group_started(other_group).await.unwrap();
        assert_eq!(records.end_task("unknown", Duration::ZERO).await, 0);

        let reaper = std::thread::spawn(move || child.wait());
        let ended = records
            .end_task("stopped", Duration::from_millis(500))
            .await;
        reaper.join().unwrap().unwrap();
        assert_eq!(ended, 1);
        assert!(!process_is_alive(group.pgid));
        assert!(
            process_is_alive(other_group.pgid),
            "another task's group was ended"
        );
        drop(first);

        let reaper = std::thread::spawn(move || other.wait());
        assert_eq!(records.end_task("bystander", Duration::ZERO).await, 1);
        reaper.join().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn orphans_of_this_boot_are_ended_on_start_and_records_cleared() {
        let dir = temp_dir();
        let records = ProcessRecords::open(&dir.0, Cgroups::off("test")).unwrap();
        let (mut child, group) = spawn_group();
        let (mut other, other_group) = spawn_group();
        tokio::time::sleep(Duration::from_millis(100)).await;
        records
            .observer("crashed", &CgroupLimits::default())
            .group_started(group)
            .await
            .unwrap();
        // A record whose start time does not match (a reused pid), one from
        // another boot, and a leftover temporary file.
        let run = dir.0.join("run");
        std::fs::write(
            run.join("reused.pids"),
            format!(
                "boot {}\ngroup {} {}\n",
                boot_id(),
                other_group.pgid,
                other_group.start_time + 1
            ),
        )
        .unwrap();
        std::fs::write(
            run.join("old-boot.pids"),
            format!(
                "boot not-this-one\ngroup {} {}\n",
                other_group.pgid, other_group.start_time
            ),
        )
        .unwrap();
        std::fs::write(run.join("x.pids.tmp"), "partial").unwrap();

        let reaper = std::thread::spawn(move || child.wait());
        let report = records
            .end_orphans(Duration::from_millis(500))
            .await
            .unwrap();
        reaper.join().unwrap().unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(report.groups_ended, 1, "{report:?}");
        assert!(report.processes_ended >= 2, "{report:?}");
        assert!(report.survivors.is_empty());
        assert!(!process_is_alive(group.pgid));
        assert!(
            process_is_alive(other_group.pgid),
            "an unrelated group was signalled"
        );
        assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
        let reaper = std::thread::spawn(move || other.wait());
        end_recorded_group(other_group, Duration::ZERO).await;
        reaper.join().unwrap().unwrap();
    }
}
