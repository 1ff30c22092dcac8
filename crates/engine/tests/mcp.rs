//! MCP servers as tools, against real servers: `mcp-server-time` (PyPI,
//! third-party) and the tests' own server on the Python MCP SDK
//! (`tests/mcp/agentd_test_server.py`), over stdio and Streamable HTTP on
//! 127.0.0.1. Both come from `.tools/mcp-venv` (`scripts/setup --test`;
//! `AGENTD_MCP_VENV` points elsewhere).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_engine::agent::{Agent, AgentOptions, RunOutcome};
use agentd_engine::config::{McpServerConfig, Provider, ResolvedConfig};
use agentd_engine::events::EngineEvent;
use agentd_engine::llm;
use agentd_engine::messages::Role;
use agentd_engine::testing::{ScriptedLlm, ScriptedResponse, ScriptedServer, openai};
use agentd_engine::tools::{ProcessGroup, ProcessObserver, ToolSetOptions, process_is_alive};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_util::sync::CancellationToken;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn venv_bin(program: &str) -> String {
    let venv = std::env::var_os("AGENTD_MCP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/mcp-venv"));
    let path = venv.join("bin").join(program);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup --test (or set AGENTD_MCP_VENV)",
        path.display()
    );
    path.display().to_string()
}

fn time_server() -> McpServerConfig {
    McpServerConfig {
        command: Some(venv_bin("mcp-server-time")),
        args: vec!["--local-timezone".into(), "UTC".into()],
        ..McpServerConfig::default()
    }
}

fn test_server_script() -> String {
    repo_root()
        .join("tests/mcp/agentd_test_server.py")
        .display()
        .to_string()
}

fn test_server() -> McpServerConfig {
    McpServerConfig {
        command: Some(venv_bin("python")),
        args: vec![test_server_script()],
        ..McpServerConfig::default()
    }
}

fn config(servers: &[(&str, McpServerConfig)], allow: &[&str]) -> ResolvedConfig {
    let mut cfg = ResolvedConfig::defaults(Provider::OpenAi);
    cfg.tools = vec!["task_done".into()];
    cfg.mcp_servers = servers
        .iter()
        .map(|(n, c)| (n.to_string(), c.clone()))
        .collect::<BTreeMap<_, _>>();
    cfg.allow_mcp_servers = allow.iter().map(|s| s.to_string()).collect();
    cfg
}

/// Records the process groups the tools report, as the service does.
#[derive(Debug, Default)]
struct Groups(Mutex<Vec<(ProcessGroup, bool)>>);

#[async_trait::async_trait]
impl ProcessObserver for Groups {
    async fn group_started(&self, group: ProcessGroup) -> std::io::Result<()> {
        self.0.lock().unwrap().push((group, true));
        Ok(())
    }
    fn group_ended(&self, group: ProcessGroup) {
        self.0.lock().unwrap().push((group, false));
    }
}

impl Groups {
    fn started(&self) -> Vec<i32> {
        let groups = self.0.lock().unwrap();
        groups
            .iter()
            .filter(|(_, s)| *s)
            .map(|(g, _)| g.pgid)
            .collect()
    }
    fn ended(&self) -> Vec<i32> {
        let groups = self.0.lock().unwrap();
        groups
            .iter()
            .filter(|(_, s)| !*s)
            .map(|(g, _)| g.pgid)
            .collect()
    }
}

struct Run {
    agent: Agent,
    events: UnboundedReceiver<EngineEvent>,
    groups: Arc<Groups>,
    _dir: tempfile::TempDir,
}

async fn agent(cfg: &ResolvedConfig, llm: Arc<dyn llm::LlmClient>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let groups = Arc::new(Groups::default());
    let (tx, events) = unbounded_channel();
    let options = AgentOptions {
        tools: ToolSetOptions {
            process_observer: Some(groups.clone()),
            ..ToolSetOptions::default()
        },
        ..AgentOptions::default()
    };
    let agent = Agent::new(cfg, llm, "use the tools", dir.path(), options, Arc::new(tx))
        .await
        .unwrap();
    Run {
        agent,
        events,
        groups,
        _dir: dir,
    }
}

fn drain(rx: &mut UnboundedReceiver<EngineEvent>) -> Vec<EngineEvent> {
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    events
}

fn tool_results(events: &[EngineEvent]) -> Vec<(String, bool, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::ToolResult { result, .. } => Some((
                result.name.clone(),
                result.success,
                format!(
                    "{}{}",
                    result.result,
                    result.error.clone().unwrap_or_default()
                ),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_third_party_stdio_server_answers_the_model_through_the_event_log() {
    let llm = Arc::new(ScriptedLlm::new(vec![
        Ok(ScriptedLlm::tool_calls(&[(
            "c1",
            "get_current_time",
            json!({"timezone": "UTC"}),
        )])),
        Ok(ScriptedLlm::tool_calls(&[("c2", "task_done", json!({}))])),
    ]));
    let cfg = config(&[("time", time_server())], &["time"]);
    let mut run = agent(&cfg, llm.clone()).await;
    let outcome = run.agent.run(&CancellationToken::new()).await;
    assert!(outcome.is_success(), "{outcome:?}");

    let calls = llm.calls();
    assert_eq!(
        calls[0].1,
        ["task_done", "get_current_time", "convert_time"]
    );
    let events = drain(&mut run.events);
    let results = tool_results(&events);
    assert_eq!(results[0].0, "get_current_time");
    assert!(results[0].1, "{results:?}");
    assert!(
        results[0].2.contains("\"timezone\": \"UTC\""),
        "{results:?}"
    );
    // The model's next turn carries the server's answer.
    let answer = calls[1]
        .0
        .iter()
        .find(|m| m.role == Role::Tool)
        .and_then(|m| m.tool_result.clone())
        .unwrap();
    assert_eq!(answer.call_id, "c1");
    assert_eq!(answer.result, results[0].2);
    // Its process group was reported, and is gone once the run ended.
    let started = run.groups.started();
    assert_eq!(started.len(), 1);
    assert_eq!(run.groups.ended(), started);
    assert!(!process_is_alive(started[0]));
}

#[tokio::test]
async fn mcp_tools_reach_the_provider_with_their_schemas() {
    let server = ScriptedServer::start(vec![
        ScriptedResponse::ok(openai::tool_call("c1", "add", r#"{"a": 2, "b": 40}"#)),
        ScriptedResponse::ok(openai::tool_call("c2", "task_done", "{}")),
    ])
    .await
    .unwrap();
    let mut cfg = config(&[("calc", test_server())], &["calc"]);
    let scripted = server.config(Provider::OpenAi);
    cfg.base_url = scripted.base_url.clone();
    cfg.api_key = scripted.api_key.clone();
    cfg.max_retries = 0;
    let llm = llm::client_for(&cfg).unwrap();
    let mut run = agent(&cfg, llm).await;
    let outcome = run.agent.run(&CancellationToken::new()).await;
    assert!(outcome.is_success(), "{outcome:?}");
    let first = server.requests()[0].json();
    let add = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "add")
        .cloned()
        .unwrap();
    assert_eq!(add["type"], "function");
    assert_eq!(add["function"]["description"], "Adds two integers.");
    let params = &add["function"]["parameters"];
    assert_eq!(params["type"], "object");
    assert_eq!(params["properties"]["a"]["type"], "integer");
    assert_eq!(params["required"], json!(["a", "b"]));
    // The answer went back as the tool message of the second request.
    let second = server.requests()[1].json();
    let tool_msg = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .cloned()
        .unwrap();
    assert_eq!(tool_msg["tool_call_id"], "c1");
    assert!(
        tool_msg["content"]
            .as_str()
            .unwrap()
            .contains("2 + 40 = 42"),
        "{tool_msg}"
    );
}

#[tokio::test]
async fn a_server_that_exits_mid_run_gives_the_model_tool_errors_and_the_run_goes_on() {
    let llm = Arc::new(ScriptedLlm::new(vec![
        Ok(ScriptedLlm::tool_calls(&[("c1", "exit_server", json!({}))])),
        Ok(ScriptedLlm::tool_calls(&[(
            "c2",
            "add",
            json!({"a": 1, "b": 2}),
        )])),
        Ok(ScriptedLlm::tool_calls(&[("c3", "task_done", json!({}))])),
    ]));
    let cfg = config(&[("calc", test_server())], &["calc"]);
    let mut run = agent(&cfg, llm.clone()).await;
    let outcome = run.agent.run(&CancellationToken::new()).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(llm.calls().len(), 3);
    let results = tool_results(&drain(&mut run.events));
    assert_eq!(results[0].0, "exit_server");
    assert!(!results[0].1, "{results:?}");
    assert_eq!(results[1].0, "add");
    assert!(!results[1].1, "{results:?}");
    assert!(results[1].2.contains("no longer running"), "{results:?}");
    assert!(results[2].1, "task_done: {results:?}");
}

#[tokio::test]
async fn a_server_that_does_not_start_fails_the_run_before_its_first_step() {
    let llm = Arc::new(ScriptedLlm::new(vec![]));
    let broken = McpServerConfig {
        command: Some("/nonexistent/mcp-server".into()),
        ..McpServerConfig::default()
    };
    let cfg = config(&[("broken", broken)], &["broken"]);
    let mut run = agent(&cfg, llm.clone()).await;
    let outcome = run.agent.run(&CancellationToken::new()).await;
    let RunOutcome::Failed { error, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        error.starts_with("MCP server 'broken' could not start `/nonexistent/mcp-server`"),
        "{error}"
    );
    assert!(llm.calls().is_empty());
    assert_eq!(run.agent.steps_taken(), 0);
    let events = drain(&mut run.events);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, EngineEvent::StepStarted { .. }))
    );

    // A server that never answers `initialize`: its own timeout, then the
    // same failure, and its process is ended.
    let silent = McpServerConfig {
        command: Some("sh".into()),
        args: vec!["-c".into(), "echo waiting >&2; sleep 30".into()],
        timeout: Some(0.5),
        ..McpServerConfig::default()
    };
    let cfg = config(&[("silent", silent)], &["silent"]);
    let llm = Arc::new(ScriptedLlm::new(vec![]));
    let mut run = agent(&cfg, llm.clone()).await;
    let outcome = run.agent.run(&CancellationToken::new()).await;
    let RunOutcome::Failed { error, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        error.starts_with("MCP server 'silent' did not initialise within 0.5 s"),
        "{error}"
    );
    assert!(error.contains("waiting"), "stderr tail: {error}");
    assert!(llm.calls().is_empty());
    let started = run.groups.started();
    assert_eq!(started.len(), 1);
    assert!(!process_is_alive(started[0]));
}

#[tokio::test]
async fn servers_not_in_allow_mcp_servers_are_never_started() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let spy = McpServerConfig {
        command: Some("sh".into()),
        args: vec!["-c".into(), format!("touch {}; sleep 30", marker.display())],
        ..McpServerConfig::default()
    };
    let llm = Arc::new(ScriptedLlm::new(vec![Ok(ScriptedLlm::tool_calls(&[(
        "c1",
        "task_done",
        json!({}),
    )]))]));
    let cfg = config(&[("time", time_server()), ("spy", spy)], &["time"]);
    let mut run = agent(&cfg, llm.clone()).await;
    assert!(run.agent.run(&CancellationToken::new()).await.is_success());
    assert_eq!(
        llm.calls()[0].1,
        ["task_done", "get_current_time", "convert_time"]
    );
    assert!(!marker.exists());
    assert_eq!(run.groups.started().len(), 1);
}

#[tokio::test]
async fn a_stop_during_a_slow_mcp_call_ends_the_server() {
    let llm = Arc::new(ScriptedLlm::new(vec![Ok(ScriptedLlm::tool_calls(&[(
        "c1",
        "slow",
        json!({"seconds": 60}),
    )]))]));
    let cfg = config(&[("calc", test_server())], &["calc"]);
    let mut run = agent(&cfg, llm).await;
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    let mut events = run.events;
    let watcher = tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if matches!(e, EngineEvent::ToolCall { .. }) {
                // Let the call reach the server, then stop.
                tokio::time::sleep(Duration::from_millis(300)).await;
                stopper.cancel();
            }
        }
    });
    let outcome = run.agent.run(&cancel).await;
    assert!(matches!(outcome, RunOutcome::Stopped { .. }), "{outcome:?}");
    let started = run.groups.started();
    assert_eq!(started.len(), 1);
    assert!(!process_is_alive(started[0]));
    assert_eq!(run.groups.ended(), started);
    drop(run.agent);
    watcher.await.unwrap();
}

/// The tests' server over Streamable HTTP on a free 127.0.0.1 port; ended on drop.
struct HttpServer {
    child: std::process::Child,
    url: String,
}

impl HttpServer {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(venv_bin("python"))
            .args([test_server_script(), "--http".into(), port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        HttpServer {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_streamable_http_server_serves_its_tools() {
    let http = HttpServer::start().await;
    let llm = Arc::new(ScriptedLlm::new(vec![
        Ok(ScriptedLlm::tool_calls(&[(
            "c1",
            "add",
            json!({"a": 20, "b": 22}),
        )])),
        Ok(ScriptedLlm::tool_calls(&[("c2", "task_done", json!({}))])),
    ]));
    let remote = McpServerConfig {
        http_url: Some(http.url.clone()),
        headers: [("X-Test".to_string(), "yes".to_string())].into(),
        ..McpServerConfig::default()
    };
    let cfg = config(&[("remote", remote)], &["remote"]);
    let mut run = agent(&cfg, llm.clone()).await;
    let outcome = run.agent.run(&CancellationToken::new()).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        llm.calls()[0].1,
        ["task_done", "add", "slow", "exit_server"]
    );
    let results = tool_results(&drain(&mut run.events));
    assert_eq!(results[0], ("add".into(), true, "20 + 22 = 42".into()));
    assert!(run.groups.started().is_empty());

    // `/api/tools?include_mcp=true` lists what the model would see.
    let servers = [("remote", &cfg.mcp_servers["remote"])];
    let listed =
        agentd_engine::tools::mcp::list_tools(&servers, run._dir.path(), &Default::default())
            .await
            .unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|(s, t)| format!("{s}/{}", t.name))
        .collect();
    assert_eq!(names, ["remote/add", "remote/slow", "remote/exit_server"]);
    assert_eq!(listed[0].1.parameters["required"], json!(["a", "b"]));
}
