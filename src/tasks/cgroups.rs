//! A control group per task, so that every process a task starts — also
//! one that left its process group (`setsid`, daemons, double forks) — is
//! counted against the task's limits and killed with the task.
//!
//! Probed once at start, for the layouts Linux machines have:
//! - pure cgroup v2 (`/sys/fs/cgroup` is `cgroup2`): kill with
//!   `cgroup.kill`, limits with `memory.max`, `pids.max`, `cpu.max` once the
//!   controllers are enabled for agentd's subtree;
//! - hybrid (v2 at `/sys/fs/cgroup/unified`, often without controllers, next
//!   to v1 hierarchies): kill with v2's `cgroup.kill`, limits in the v1
//!   `memory`, `pids` and `cpu` hierarchies;
//! - v1 only: limits in v1, and the kill by signalling every member of the
//!   task's `pids` (or `memory`) group until none is left.
//!
//! Each agentd keeps its groups below `agentd-<id>` in its own cgroup of
//! each hierarchy, `<id>` derived from its data directory (and node), so two
//! agentd on one machine never touch each other's groups, and a restart
//! with the same data directory ends what a crash left behind.
//! Where no group can be made (no permission, no cgroup filesystem), agentd
//! says so at start and relies on process groups alone.

use std::{
    ffi::CString,
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// `--task-cgroups`: which hierarchies tasks' groups are made in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CgroupMode {
    /// v2 where mounted, v1 for the controllers v2 does not offer.
    #[default]
    Auto,
    /// v2 only (on a hybrid machine: the kill, but no limits).
    V2,
    /// v1 only (limits, and the kill by signals).
    V1,
    /// Process groups only.
    Off,
}

impl CgroupMode {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" | "on" | "true" | "1" | "yes" => Ok(Self::Auto),
            "v2" => Ok(Self::V2),
            "v1" => Ok(Self::V1),
            "off" | "false" | "0" | "no" => Ok(Self::Off),
            _ => Err(format!("{text:?}: use auto, v2, v1 or off")),
        }
    }
}

/// Per-task limits (`--task-memory-max`, `--task-pids-max`, `--task-cpu-max`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    /// Bytes of memory (page cache included) before the kernel's OOM killer
    /// picks a process of the task.
    pub memory_max: Option<u64>,
    /// Processes and threads at once; a fork past it fails (EAGAIN).
    pub pids_max: Option<u64>,
    /// CPUs' worth of time per period (1.5 = one and a half cores).
    pub cpu_max: Option<f64>,
}

/// `--task-memory-max`: bytes, with an optional binary suffix (`512M`,
/// `2G`, `1.5G`); `max` or `0`: no limit.
pub fn parse_bytes(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("max") || t == "0" {
        return Ok(None);
    }
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let scale: u64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use K, M, G or T)"
            ));
        }
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(Some((n * scale as f64) as u64)),
        _ => Err(format!("{text:?} is not a size such as 512M or 2G")),
    }
}

/// The name of this agentd's groups: stable for one data directory (so a
/// restart finds what a crash left), different for another agentd.
pub fn id_for(data_dir: &Path) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The v1 controllers agentd uses, and their limit files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// How tasks' groups are made here.
#[derive(Debug)]
struct Layout {
    /// The v2 directory the tasks' groups go in, when v2 is mounted.
    v2: Option<PathBuf>,
    /// Controllers enabled for `v2`'s children.
    v2_controllers: Vec<Controller>,
    /// v1 hierarchies for the controllers v2 does not provide.
    v1: Vec<(Controller, PathBuf)>,
    limits: CgroupLimits,
}

/// What is in force, for `/api/config` and `/ap/v1/agent/status`.
#[derive(Debug, Clone, PartialEq)]
pub enum CgroupStatus {
    /// Tasks run in control groups.
    On {
        /// "cgroup v2", "cgroup v1 + v2 (hybrid)" or "cgroup v1".
        layout: String,
        /// How a task's processes are killed: "cgroup.kill" or "signal".
        kill: String,
        /// The limits enforced, e.g. "memory.max=1073741824".
        limits: Vec<String>,
        /// Limits asked for that this machine cannot enforce, and why.
        missing: Vec<String>,
    },
    /// Process groups only, and why.
    Off { reason: String },
}

/// The control groups of this agentd's tasks (cheap to clone).
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Option<Arc<Layout>>,
    status: CgroupStatus,
    /// The server's limits: each task's default, and the most a run may ask.
    limits: CgroupLimits,
}

impl Cgroups {
    /// No control groups (tests of other parts, or turned off).
    pub fn off(reason: &str) -> Self {
        Self {
            layout: None,
            status: CgroupStatus::Off {
                reason: reason.into(),
            },
            limits: CgroupLimits::default(),
        }
    }

    /// Probes this machine's cgroup filesystems and prepares
    /// `agentd-<id>` in each usable hierarchy; never fails: what cannot be
    /// used is reported in the status.
    pub fn probe(mode: CgroupMode, id: &str, limits: CgroupLimits) -> Self {
        if mode == CgroupMode::Off {
            return Self::off("turned off (--task-cgroups off)");
        }
        match Layout::probe(mode, id, limits) {
            Ok(layout) => {
                let status = layout.status();
                Self {
                    layout: Some(Arc::new(layout)),
                    status,
                    limits,
                }
            }
            Err(reason) => Self {
                limits,
                ..Self::off(&reason)
            },
        }
    }

    pub fn status(&self) -> &CgroupStatus {
        &self.status
    }

    /// A run's limits: what it asks for (`asked`, lower than the server's
    /// or where the server sets none), else the server's. Asking for more
    /// than the server allows is refused: the server's limits protect the
    /// host and every other task.
    pub fn limits_for(&self, asked: &CgroupLimits) -> Result<CgroupLimits, String> {
        fn pick<T: PartialOrd + Copy>(
            name: &str,
            asked: Option<T>,
            max: Option<T>,
            zero: T,
            shown: impl Fn(T) -> String,
        ) -> Result<Option<T>, String> {
            match (asked, max) {
                (Some(a), _) if a <= zero => Err(format!("{name} must be above {}", shown(zero))),
                (Some(a), Some(m)) if a > m => Err(format!(
                    "{name} {} is above this server's maximum {} (--{})",
                    shown(a),
                    shown(m),
                    name.replace('_', "-")
                )),
                (Some(a), _) => Ok(Some(a)),
                (None, m) => Ok(m),
            }
        }
        let s = &self.limits;
        Ok(CgroupLimits {
            memory_max: pick("task_memory_max", asked.memory_max, s.memory_max, 0, |b| {
                format!("{} MiB", b as f64 / 1048576.0)
            })?,
            pids_max: pick("task_pids_max", asked.pids_max, s.pids_max, 0, |n| {
                n.to_string()
            })?,
            cpu_max: pick("task_cpu_max", asked.cpu_max, s.cpu_max, 0.0, |c| {
                format!("{c} CPUs")
            })?,
        })
    }

    /// Makes (or reuses) the task's groups, with `limits` set (see
    /// [`Cgroups::limits_for`]).
    pub fn create(&self, task_id: &str, limits: &CgroupLimits) -> Option<TaskCgroup> {
        let layout = self.layout.as_ref()?;
        match layout.create(task_id, limits) {
            Ok(group) => Some(group),
            Err(e) => {
                tracing::warn!(%task_id, error = %e, "could not make the task's control group; its processes run without one");
                None
            }
        }
    }

    /// Removes this agentd's (empty) base directories, on shutdown.
    pub fn close(&self) {
        if let Some(layout) = &self.layout {
            for base in layout.bases() {
                let _ = std::fs::remove_dir(base);
            }
        }
    }

    /// Kills and removes every task group a previous agentd with this id
    /// left (a crash); returns how many there were. Runs on start.
    pub fn end_leftovers(&self) -> usize {
        let Some(layout) = &self.layout else { return 0 };
        let mut names = std::collections::BTreeSet::new();
        for dir in layout.bases() {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        names.insert(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        for name in &names {
            layout.group(name, &CgroupLimits::default()).remove();
        }
        names.len()
    }
}

impl Layout {
    fn probe(mode: CgroupMode, id: &str, limits: CgroupLimits) -> Result<Self, String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let base_name = format!("agentd-{id}");
        let mut v2 = None;
        let mut v2_controllers = Vec::new();
        let mut problems = Vec::new();
        let v2_mount = cgroup_mounts(&mounts).find(|m| m.v2);
        if let Some(mount) = v2_mount.filter(|_| mode != CgroupMode::V1) {
            let dir = mount.dir_of(own_path(&own, None));
            match prepare_v2(&dir, &base_name) {
                Ok((base, controllers)) => {
                    v2 = Some(base);
                    v2_controllers = controllers;
                }
                Err(e) => problems.push(format!("cgroup v2 at {}: {e}", dir.display())),
            }
        }
        let mut v1 = Vec::new();
        for c in Controller::ALL {
            if v2_controllers.contains(&c) || mode == CgroupMode::V2 {
                continue;
            }
            let Some(mount) = cgroup_mounts(&mounts).find(|m| m.controllers.contains(&c.name()))
            else {
                continue;
            };
            let dir = mount.dir_of(own_path(&own, Some(c.name())));
            let base = dir.join(&base_name);
            match std::fs::create_dir_all(&base) {
                Ok(()) => v1.push((c, base)),
                Err(e) => problems.push(format!("cgroup v1 {}: {e}", c.name())),
            }
        }
        let layout = Layout {
            v2,
            v2_controllers,
            v1,
            limits,
        };
        if layout.v2.is_none() && layout.v1.is_empty() {
            return Err(if problems.is_empty() {
                "no cgroup filesystem is mounted".into()
            } else {
                problems.join("; ")
            });
        }
        for p in problems {
            tracing::warn!("{p}");
        }
        Ok(layout)
    }

    fn bases(&self) -> impl Iterator<Item = &Path> {
        self.v2
            .iter()
            .map(PathBuf::as_path)
            .chain(self.v1.iter().map(|(_, p)| p.as_path()))
    }

    /// Where the limit for `c` is set, if anywhere.
    fn has(&self, c: Controller) -> bool {
        self.v2_controllers.contains(&c) || self.v1.iter().any(|(v, _)| *v == c)
    }

    fn status(&self) -> CgroupStatus {
        let layout = match (&self.v2, self.v1.is_empty()) {
            (Some(_), true) => "cgroup v2",
            (Some(_), false) => "cgroup v1 + v2 (hybrid)",
            (None, _) => "cgroup v1",
        };
        let mut limits = Vec::new();
        let mut missing = Vec::new();
        let mut note = |c: Controller, set: Option<String>| match set {
            Some(v) if self.has(c) => limits.push(format!("{}={v}", c.name())),
            Some(v) => missing.push(format!(
                "{}={v} (no {} controller available)",
                c.name(),
                c.name()
            )),
            None => {}
        };
        note(
            Controller::Memory,
            self.limits.memory_max.map(|b| b.to_string()),
        );
        note(
            Controller::Pids,
            self.limits.pids_max.map(|n| n.to_string()),
        );
        note(Controller::Cpu, self.limits.cpu_max.map(|c| c.to_string()));
        CgroupStatus::On {
            layout: layout.into(),
            kill: if self.v2.is_some() {
                "cgroup.kill"
            } else {
                "signal"
            }
            .into(),
            limits,
            missing,
        }
    }

    /// The task's directories (not created).
    fn group(&self, task_id: &str, limits: &CgroupLimits) -> TaskCgroup {
        TaskCgroup {
            v2: self.v2.as_ref().map(|b| b.join(task_id)),
            v1: self.v1.iter().map(|(c, b)| (*c, b.join(task_id))).collect(),
            memory_max: limits.memory_max.filter(|_| self.has(Controller::Memory)),
            pids_max: limits.pids_max.filter(|_| self.has(Controller::Pids)),
        }
    }

    fn create(&self, task_id: &str, limits: &CgroupLimits) -> std::io::Result<TaskCgroup> {
        let group = self.group(task_id, limits);
        for dir in group.dirs() {
            match std::fs::create_dir(dir) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        let l = limits;
        if let Some(dir) = &group.v2 {
            for c in &self.v2_controllers {
                match (c, l) {
                    (
                        Controller::Memory,
                        CgroupLimits {
                            memory_max: Some(b),
                            ..
                        },
                    ) => {
                        write(dir, "memory.max", &b.to_string())?;
                        // Swap would let a task outgrow its limit unnoticed.
                        let _ = write(dir, "memory.swap.max", "0");
                    }
                    (
                        Controller::Pids,
                        CgroupLimits {
                            pids_max: Some(n), ..
                        },
                    ) => write(dir, "pids.max", &n.to_string())?,
                    (
                        Controller::Cpu,
                        CgroupLimits {
                            cpu_max: Some(c), ..
                        },
                    ) => write(dir, "cpu.max", &format!("{} 100000", cpu_quota(*c)))?,
                    _ => {}
                }
            }
        }
        for (c, dir) in &group.v1 {
            match (c, l) {
                (
                    Controller::Memory,
                    CgroupLimits {
                        memory_max: Some(b),
                        ..
                    },
                ) => {
                    write(dir, "memory.limit_in_bytes", &b.to_string())?;
                    let _ = write(dir, "memory.memsw.limit_in_bytes", &b.to_string());
                }
                (
                    Controller::Pids,
                    CgroupLimits {
                        pids_max: Some(n), ..
                    },
                ) => write(dir, "pids.max", &n.to_string())?,
                (
                    Controller::Cpu,
                    CgroupLimits {
                        cpu_max: Some(c), ..
                    },
                ) => {
                    write(dir, "cpu.cfs_period_us", "100000")?;
                    write(dir, "cpu.cfs_quota_us", &cpu_quota(*c).to_string())?;
                }
                _ => {}
            }
        }
        Ok(group)
    }
}

/// One task's groups, one directory per hierarchy.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCgroup {
    v2: Option<PathBuf>,
    v1: Vec<(Controller, PathBuf)>,
    /// The memory limit in force, for the model's notice of an OOM kill.
    pub memory_max: Option<u64>,
    /// The process limit in force, for the notice of a refused fork.
    pub pids_max: Option<u64>,
}

/// How long a kill may take to empty the group.
const KILL_SETTLE: Duration = Duration::from_secs(2);

impl TaskCgroup {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.v2.iter().chain(self.v1.iter().map(|(_, d)| d))
    }

    /// The `cgroup.procs` files a process joins to be in every group.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// The pids in the group (from the hierarchy that sees them all).
    pub fn members(&self) -> Vec<i32> {
        let Some(dir) = self.dirs().next() else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills every process in the group (blocking, bounded) and reports
    /// how many there were.
    pub fn kill(&self) -> usize {
        let found = self.members().len();
        if found == 0 {
            return 0;
        }
        let killed_by_cgroup = self
            .v2
            .as_ref()
            .is_some_and(|d| write(d, "cgroup.kill", "1").is_ok());
        let deadline = Instant::now() + KILL_SETTLE;
        loop {
            let left = self.members();
            if left.is_empty() || Instant::now() >= deadline {
                if !left.is_empty() {
                    tracing::error!(
                        ?left,
                        "processes of a task's control group survived SIGKILL"
                    );
                }
                return found;
            }
            if !killed_by_cgroup {
                // v1: what forks meanwhile is caught by the next round.
                for pid in left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills what is left and removes the directories (blocking).
    pub fn remove(&self) {
        self.kill();
        for dir in self.dirs() {
            // A killed process leaves its group a moment after it is reaped.
            let deadline = Instant::now() + KILL_SETTLE;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a task's control group");
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }

    /// OOM kills in the group so far (0 where the kernel does not count them).
    pub fn oom_kills(&self) -> u64 {
        let counted = |dir: &Path, file: &str| {
            let text = std::fs::read_to_string(dir.join(file)).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        };
        if let Some(d) = &self.v2
            && let Some(n) = counted(d, "memory.events")
        {
            return n;
        }
        self.v1
            .iter()
            .find(|(c, _)| *c == Controller::Memory)
            .and_then(|(_, d)| counted(d, "memory.oom_control"))
            .unwrap_or(0)
    }
}

impl TaskCgroup {
    /// Forks refused by `pids.max` so far (`pids.events`: "max N").
    pub fn pids_refusals(&self) -> u64 {
        let counted = |dir: &Path| {
            let text = std::fs::read_to_string(dir.join("pids.events")).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("max "))
                .and_then(|n| n.trim().parse().ok())
        };
        self.v2
            .iter()
            .chain(
                self.v1
                    .iter()
                    .filter(|(c, _)| *c == Controller::Pids)
                    .map(|(_, d)| d),
            )
            .find_map(|d| counted(d))
            .unwrap_or(0)
    }
}

fn cpu_quota(cpus: f64) -> u64 {
    ((cpus * 100_000.0) as u64).max(1_000)
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// Makes `<dir>/<base>` and enables for its children the controllers
/// `dir` offers (moving agentd into a leaf of its own when v2's "no
/// processes in inner groups" rule requires it).
fn prepare_v2(dir: &Path, base: &str) -> std::io::Result<(PathBuf, Vec<Controller>)> {
    if !dir.join("cgroup.procs").exists() {
        return Err(std::io::Error::new(ErrorKind::NotFound, "not a cgroup"));
    }
    let base_dir = dir.join(base);
    std::fs::create_dir_all(&base_dir)?;
    if !base_dir.join("cgroup.kill").exists() {
        return Err(std::io::Error::new(
            ErrorKind::Unsupported,
            "cgroup.kill is missing (kernel older than 5.14)",
        ));
    }
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<Controller> = Controller::ALL
        .into_iter()
        .filter(|c| offered.split_whitespace().any(|o| o == c.name()))
        .collect();
    let mut enabled = Vec::new();
    for c in wanted {
        let on = format!("+{}", c.name());
        let mut ok = write(dir, "cgroup.subtree_control", &on).is_ok();
        if !ok && !dir.ends_with("agentd-service") {
            // agentd's own group has processes (agentd): move agentd to a
            // leaf so that its group may delegate controllers.
            let leaf = dir.join("agentd-service");
            if std::fs::create_dir_all(&leaf).is_ok()
                && write(&leaf, "cgroup.procs", &std::process::id().to_string()).is_ok()
            {
                ok = write(dir, "cgroup.subtree_control", &on).is_ok();
            }
        }
        if ok && write(&base_dir, "cgroup.subtree_control", &on).is_ok() {
            enabled.push(c);
        }
    }
    Ok((base_dir, enabled))
}

/// One cgroup mount of `/proc/self/mountinfo`.
struct Mount<'a> {
    root: &'a str,
    point: &'a str,
    v2: bool,
    controllers: Vec<&'a str>,
}

impl Mount<'_> {
    /// The directory of cgroup `path` (as `/proc/self/cgroup` names it).
    fn dir_of(&self, path: &str) -> PathBuf {
        let rel = path.strip_prefix(self.root).unwrap_or(path);
        Path::new(self.point).join(rel.trim_start_matches('/'))
    }
}

fn cgroup_mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let _source = right.next()?;
        let options = right.next().unwrap_or("");
        let (root, point) = (*fields.get(3)?, *fields.get(4)?);
        match fstype {
            "cgroup2" => Some(Mount {
                root,
                point,
                v2: true,
                controllers: Vec::new(),
            }),
            "cgroup" => Some(Mount {
                root,
                point,
                v2: false,
                controllers: options.split(',').collect(),
            }),
            _ => None,
        }
    })
}

/// agentd's own cgroup path in the v2 hierarchy (`None`) or in the v1
/// hierarchy of `controller`.
fn own_path<'a>(proc_cgroup: &'a str, controller: Option<&str>) -> &'a str {
    proc_cgroup
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = match controller {
                None => names.is_empty(),
                Some(c) => names.split(',').any(|n| n == c),
            };
            matches.then_some(path)
        })
        .unwrap_or("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("512M"), Ok(Some(512 << 20)));
        assert_eq!(parse_bytes("2G"), Ok(Some(2 << 30)));
        assert_eq!(parse_bytes("1.5GiB"), Ok(Some(3 << 29)));
        assert_eq!(parse_bytes("4096"), Ok(Some(4096)));
        assert_eq!(parse_bytes("max"), Ok(None));
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert_ne!(id_for(Path::new("/a")), id_for(Path::new("/b")));
        // tests/e2e/helpers.py computes the same name to clean up after a kill.
        assert_eq!(
            id_for(Path::new("/nonexistent/agentd-data")),
            "7fd103e028d7dc00"
        );
    }

    #[test]
    fn reads_hybrid_and_pure_layouts() {
        let mountinfo = "\
35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
36 24 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
37 24 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
38 24 0:33 /docker/abc /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
39 24 0:34 / /proc rw - proc proc rw";
        let mounts: Vec<Mount> = cgroup_mounts(mountinfo).collect();
        assert_eq!(mounts.len(), 4);
        assert!(mounts[0].v2);
        assert_eq!(mounts[2].controllers, vec!["rw", "cpu", "cpuacct"]);
        let own = "4:memory:/process_api/x\n2:cpu,cpuacct:/\n3:pids:/docker/abc/inner\n0::/\n";
        assert_eq!(own_path(own, None), "/");
        assert_eq!(own_path(own, Some("cpu")), "/");
        assert_eq!(
            mounts[1].dir_of(own_path(own, Some("memory"))),
            Path::new("/sys/fs/cgroup/memory/process_api/x")
        );
        // A mount whose root is the container's own group.
        assert_eq!(
            mounts[3].dir_of(own_path(own, Some("pids"))),
            Path::new("/sys/fs/cgroup/pids/inner")
        );
    }

    /// A run may lower the server's limits or set one the server leaves
    /// open, never raise one; with nothing asked it gets the server's.
    #[test]
    fn a_run_asks_for_limits_within_the_servers() {
        let server = Cgroups {
            limits: CgroupLimits {
                memory_max: Some(1 << 30),
                pids_max: Some(4096),
                cpu_max: None,
            },
            ..Cgroups::off("test")
        };
        assert_eq!(
            server.limits_for(&CgroupLimits::default()).unwrap(),
            server.limits
        );
        let lower = CgroupLimits {
            memory_max: Some(64 << 20),
            pids_max: None,
            cpu_max: Some(0.5),
        };
        assert_eq!(
            server.limits_for(&lower).unwrap(),
            CgroupLimits {
                pids_max: Some(4096),
                ..lower
            }
        );
        let more = CgroupLimits {
            memory_max: Some(2 << 30),
            ..CgroupLimits::default()
        };
        let err = server.limits_for(&more).unwrap_err();
        assert_eq!(
            err,
            "task_memory_max 2048 MiB is above this server's maximum 1024 MiB (--task-memory-max)"
        );
        let zero = CgroupLimits {
            pids_max: Some(0),
            ..CgroupLimits::default()
        };
        assert_eq!(
            server.limits_for(&zero).unwrap_err(),
            "task_pids_max must be above 0"
        );
    }

    /// On a machine where agentd may make groups (root here and in CI),
    /// a process that left its process group is still killed with the task.
    #[tokio::test]
    async fn a_task_group_kills_what_left_the_process_group() {
        let cgroups = Cgroups::probe(
            CgroupMode::Auto,
            &format!("test-{}", uuid::Uuid::new_v4().simple()),
            CgroupLimits {
                pids_max: Some(64),
                ..CgroupLimits::default()
            },
        );
        let limits = cgroups.limits_for(&CgroupLimits::default()).unwrap();
        let Some(group) = cgroups.create("task-1", &limits) else {
            eprintln!("no control groups here: {:?}", cgroups.status());
            return;
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "setsid sleep 301 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0);
        // The join the engine does for the bash tool.
        agentd_engine::tools::join_cgroups_on_spawn(&mut cmd, group.procs_files());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(
            &mut tokio::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .await
        .unwrap();
        let escaped: i32 = line.trim().parse().unwrap();
        assert!(group.members().contains(&escaped));
        assert!(group.kill() >= 2);
        child.wait().await.unwrap();
        assert!(
            !agentd_engine::tools::process_is_alive(escaped),
            "the setsid'd process survived"
        );
        group.remove();
        assert_eq!(cgroups.end_leftovers(), 0);
        for base in cgroups.layout.as_ref().unwrap().bases() {
            assert!(!base.join("task-1").exists());
            std::fs::remove_dir(base).unwrap();
        }
    }
}
