//! Where agents may work and how their commands are confined: the allowed
//! roots of a Trae run's `working_dir`, and the optional bubblewrap sandbox
//! of the `bash` tool (detected at start).

use std::path::{Component, Path, PathBuf};

use agentd_engine::tools::BashSandbox;
use anyhow::Context as _;

use super::cgroups::{CgroupLimits, CgroupMode};
use crate::error::{Error, Result};

/// `agentd serve` containment options.
#[derive(Debug, Clone, Default)]
pub struct Containment {
    /// `--allowed-root` / AGENTD_ALLOWED_ROOTS: when not empty, the
    /// `working_dir` of `POST /api/run` must lie inside one of these (after
    /// resolving symlinks). Agent Protocol workspaces are always allowed.
    pub allowed_roots: Vec<PathBuf>,
    /// `--sandbox` / AGENTD_SANDBOX: run `bash` under bubblewrap when it works here.
    pub sandbox: bool,
    /// `--sandbox-network`: sandboxed commands keep the host network.
    pub sandbox_network: bool,
    /// `--task-cgroups`: which control groups tasks run in.
    pub cgroups: CgroupMode,
    /// Limits of each task's control group.
    pub task_limits: CgroupLimits,
}

/// The allowed roots, resolved once at start.
#[derive(Debug, Clone, Default)]
pub struct AllowedRoots(Vec<PathBuf>);

impl AllowedRoots {
    /// Resolves each root (it must exist); empty: every directory is allowed.
    pub fn resolve(roots: &[PathBuf]) -> anyhow::Result<Self> {
        roots
            .iter()
            .filter(|r| !r.as_os_str().is_empty())
            .map(|r| {
                std::fs::canonicalize(r)
                    .with_context(|| format!("allowed root {} cannot be resolved", r.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Self)
    }

    pub fn is_restricted(&self) -> bool {
        !self.0.is_empty()
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.0
    }

    /// Refuses (400) a working directory outside every allowed root. A
    /// directory that does not exist yet is judged by its nearest existing
    /// ancestor, resolved, plus the rest of the path (which may not use
    /// `..`, since nothing below the ancestor exists to resolve it against).
    pub fn check(&self, working_dir: &Path) -> Result<()> {
        if !self.is_restricted() {
            return Ok(());
        }
        let real = resolve_lenient(working_dir).map_err(|why| {
            Error::invalid(format!(
                "working_dir {} cannot be checked against the allowed roots: {why}",
                working_dir.display()
            ))
        })?;
        if self.0.iter().any(|root| real.starts_with(root)) {
            return Ok(());
        }
        let roots: Vec<String> = self.0.iter().map(|r| r.display().to_string()).collect();
        let shown = if real == working_dir {
            String::new()
        } else {
            format!(" (resolves to {})", real.display())
        };
        Err(Error::invalid(format!(
            "working_dir {}{shown} is outside the allowed roots: {}",
            working_dir.display(),
            roots.join(", ")
        )))
    }
}

/// The real path of `path`, or of its nearest existing ancestor followed by
/// the remaining (not yet existing) components.
fn resolve_lenient(path: &Path) -> std::result::Result<PathBuf, String> {
    let components: Vec<Component> = path.components().collect();
    for split in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..split].iter().collect();
        match std::fs::canonicalize(&prefix) {
            Ok(mut real) => {
                for c in &components[split..] {
                    match c {
                        Component::Normal(name) => real.push(name),
                        Component::CurDir => {}
                        _ => {
                            return Err(format!(
                                "it uses `..` below {}, which does not exist yet",
                                prefix.display()
                            ));
                        }
                    }
                }
                return Ok(real);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", prefix.display())),
        }
    }
    Err("no part of it exists".into())
}

/// What became of `--sandbox` at start (logged, and reported by `/api/config` and `/ap/v1/agent/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Not asked for; `available` says whether bubblewrap would work.
    Off { available: bool },
    /// Every bash session runs under bubblewrap.
    On { version: String, network: bool },
    /// Asked for but bubblewrap does not work here: bash runs unconfined.
    Unavailable { reason: String },
}

impl SandboxStatus {
    pub fn enabled(&self) -> bool {
        matches!(self, SandboxStatus::On { .. })
    }
    pub fn available(&self) -> bool {
        match self {
            SandboxStatus::Off { available } => *available,
            SandboxStatus::On { .. } => true,
            SandboxStatus::Unavailable { .. } => false,
        }
    }
}

/// Detects bubblewrap and, when `--sandbox` was given and it works, the
/// sandbox every bash session runs in. `hidden`: paths commands must not
/// see (the data directory, the default configuration file).
pub async fn prepare_sandbox(
    settings: &Containment,
    hidden: Vec<PathBuf>,
) -> (Option<BashSandbox>, SandboxStatus) {
    let sandbox = BashSandbox {
        hidden,
        ..BashSandbox::new(settings.sandbox_network)
    };
    let probe = sandbox.probe().await;
    match (settings.sandbox, probe) {
        (false, probe) => {
            tracing::info!(
                available = probe.is_ok(),
                "bash sandbox off (bubblewrap {}; enable with --sandbox)",
                match &probe {
                    Ok(v) => format!("available: {v}"),
                    Err(why) => format!("not usable: {why}"),
                }
            );
            (
                None,
                SandboxStatus::Off {
                    available: probe.is_ok(),
                },
            )
        }
        (true, Ok(version)) => {
            tracing::info!(
                %version,
                network = settings.sandbox_network,
                "bash sandbox on: commands run under bubblewrap (working_dir writable, the rest read-only{})",
                if settings.sandbox_network { "" } else { ", no network" }
            );
            let status = SandboxStatus::On {
                version,
                network: settings.sandbox_network,
            };
            (Some(sandbox), status)
        }
        (true, Err(reason)) => {
            tracing::warn!(%reason, "--sandbox was given but bubblewrap does not work here: bash runs WITHOUT a sandbox");
            (None, SandboxStatus::Unavailable { reason })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_roots_follow_symlinks_and_judge_new_dirs_by_their_parent() {
        let tmp = std::env::temp_dir().join(format!("agentd-roots-{}", uuid::Uuid::new_v4()));
        let root = tmp.join("root");
        let outside = tmp.join("outside");
        std::fs::create_dir_all(root.join("proj")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let roots = AllowedRoots::resolve(std::slice::from_ref(&root)).unwrap();
        assert!(roots.check(&root).is_ok());
        assert!(roots.check(&root.join("proj")).is_ok());
        assert!(roots.check(&root.join("new/deeper")).is_ok());
        assert!(roots.check(&root.join("proj/../proj/x")).is_ok());
        for bad in [
            outside.clone(),
            root.join("escape"),
            root.join("escape/new"),
            root.join("../outside/new"),
            root.join("new/../../outside"),
            PathBuf::from("/"),
        ] {
            let err = roots.check(&bad).unwrap_err().to_string();
            assert!(
                err.contains("allowed roots") || err.contains("`..`"),
                "{bad:?}: {err}"
            );
        }
        assert!(AllowedRoots::default().check(&outside).is_ok());
        assert!(AllowedRoots::resolve(&[tmp.join("missing")]).is_err());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
