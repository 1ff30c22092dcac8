//! A temporary git repository with a bug, and checks shared by the runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentd_engine::agent::{Agent, AgentOptions, RunOutcome};
use agentd_engine::config::ResolvedConfig;
use agentd_engine::events::EngineEvent;
use agentd_engine::llm;
use agentd_engine::testing::TEST_API_KEY;
use agentd_engine::tools::BUILTIN_TOOL_NAMES;
use serde_json::Value;
use tokio::sync::mpsc::unbounded_channel;
use tokio_util::sync::CancellationToken;

pub const BUGGY: &str = "def add(a, b):\n    return a - b\n";
pub const OLD: &str = "    return a - b";
pub const NEW: &str = "    return a + b";
pub const FINAL_TEXT: &str = "Fixed add() and added a helper.";

pub struct Repo {
    pub dir: tempfile::TempDir,
    /// Patch and trajectory live outside the repository.
    pub out: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("calc.py"), BUGGY).expect("write");
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg("git init -q && git config user.email t@example.com && git config user.name t && git add . && git commit -qm init")
            .current_dir(dir.path())
            .status()
            .expect("git")
            .success();
        assert!(ok, "git init failed");
        Repo {
            dir,
            out: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn file(&self, name: &str) -> String {
        self.root().join(name).display().to_string()
    }
    pub fn patch_path(&self) -> PathBuf {
        self.out.path().join("task.patch")
    }
    pub fn trajectory_path(&self) -> PathBuf {
        self.out.path().join("trajectory.json")
    }
}

/// Runs the agent to its end with all built-in tools and `must_patch`.
pub async fn run(repo: &Repo, mut config: ResolvedConfig) -> (RunOutcome, Vec<EngineEvent>) {
    config.tools = BUILTIN_TOOL_NAMES.map(String::from).to_vec();
    config.max_steps = 10;
    let llm = llm::client_for(&config).expect("client");
    let (tx, mut rx) = unbounded_channel();
    let options = AgentOptions {
        must_patch: true,
        patch_path: Some(repo.patch_path()),
        trajectory_file: Some(repo.trajectory_path()),
        ..AgentOptions::default()
    };
    let mut agent = Agent::new(
        &config,
        llm,
        "add() subtracts instead of adding.",
        repo.root(),
        options,
        Arc::new(tx),
    )
    .await
    .expect("agent");
    let outcome = agent.run(&CancellationToken::new()).await;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (outcome, events)
}

/// The patch has the edit and the new untracked file; the user's index is untouched.
pub fn check_patch(repo: &Repo) {
    let patch = std::fs::read_to_string(repo.patch_path()).expect("patch written");
    assert!(patch.contains(&format!("-{OLD}\n+{NEW}\n")), "{patch}");
    assert!(
        patch.contains("diff --git a/helpers.py b/helpers.py\nnew file mode 100644"),
        "{patch}"
    );
    assert!(patch.contains("+def double(x):"), "{patch}");
    let status = std::process::Command::new("git")
        .args(["status", "--porcelain"])
        .current_dir(repo.root())
        .output()
        .expect("git status");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        " M calc.py\n?? helpers.py\n"
    );
}

/// Trae's trajectory layout, filled in for a 5-step successful run.
pub fn check_trajectory(repo: &Repo, provider: &str) -> Value {
    let text = std::fs::read_to_string(repo.trajectory_path()).expect("trajectory written");
    assert!(!text.contains(TEST_API_KEY), "API key in the trajectory");
    let t: Value = serde_json::from_str(&text).expect("trajectory JSON");
    assert_eq!(t["task"], "add() subtracts instead of adding.");
    assert_eq!(t["provider"], provider);
    assert_eq!(t["max_steps"], 10);
    assert_eq!(t["success"], true);
    assert_eq!(t["final_result"], FINAL_TEXT);
    assert!(t["execution_time"].as_f64().expect("execution_time") >= 0.0);
    assert!(
        !t["start_time"].as_str().unwrap_or("").is_empty()
            && !t["end_time"].as_str().unwrap_or("").is_empty()
    );

    let interactions = t["llm_interactions"].as_array().expect("llm_interactions");
    assert_eq!(interactions.len(), 5);
    let first = &interactions[0];
    assert_eq!(first["provider"], provider);
    assert_eq!(first["input_messages"][0]["role"], "system");
    assert!(
        first["input_messages"][1]["content"]
            .as_str()
            .unwrap_or("")
            .starts_with("[Project root path]:\n")
    );
    assert_eq!(
        first["tools_available"].as_array().map(Vec::len),
        Some(BUILTIN_TOOL_NAMES.len())
    );
    assert_eq!(first["response"]["usage"]["input_tokens"], 100);
    assert_eq!(
        first["response"]["tool_calls"][0]["name"],
        "str_replace_based_edit_tool"
    );

    let steps = t["agent_steps"].as_array().expect("agent_steps");
    assert_eq!(steps.len(), 5);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step["step_number"], i + 1);
        assert_eq!(step["state"], "completed");
        assert!(step["error"].is_null());
        let result = &step["tool_results"][0];
        assert_eq!(result["success"], true, "step {}: {result}", i + 1);
        assert_eq!(result["call_id"], step["tool_calls"][0]["call_id"]);
    }
    assert!(
        steps[0]["tool_results"][0]["result"]
            .as_str()
            .unwrap_or("")
            .contains("     2\t    return a - b")
    );
    assert!(
        steps[1]["tool_results"][0]["result"]
            .as_str()
            .unwrap_or("")
            .contains("has been edited")
    );
    assert_eq!(steps[3]["tool_results"][0]["result"], "5");
    assert_eq!(steps[4]["tool_results"][0]["result"], "Task done.");
    t
}

pub fn check_events(events: &[EngineEvent]) {
    let started = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::StepStarted { .. }))
        .count();
    assert_eq!(started, 5);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EngineEvent::PatchWritten { bytes, .. } if *bytes > 0))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EngineEvent::TrajectoryWritten { .. }))
    );
    assert_eq!(
        events.last(),
        Some(&EngineEvent::Completed {
            result: FINAL_TEXT.into()
        })
    );
    // Events are JSON for the task layer's log.
    for e in events {
        serde_json::to_string(e).expect("event JSON");
    }
}

/// The bash command of step 4: proves the edit took effect.
pub const CHECK_COMMAND: &str =
    "sed -n 2p calc.py | grep -c 'a + b' > /dev/null && echo $((2 + 3))";
