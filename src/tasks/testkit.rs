//! Test fixtures of the task layer: a [`Runner`] over a SQLite file, and a
//! model the test answers for, one call at a time ([`GatedLlm`]), so a test
//! can hold a run inside its model call and race it against a stop.

use std::{
    collections::VecDeque,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use agentd_engine::{
    agent::{Agent, AgentOptions},
    config::{Provider, ResolvedConfig},
    llm::{LlmClient, LlmError},
    messages::{LlmResponse, Message, ToolCall, ToolSpec, Usage},
    tools::ToolSetOptions,
};
use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use super::{
    RunnerSettings, StopReason,
    events::EventLog,
    lifecycle::{RunPlan, Runner},
    processes::ProcessRecords,
    task_event::EventKind,
};
use crate::{
    clock,
    metrics::Metrics,
    store::{Event, Origin, SqliteStore, Store, Task, TaskStatus},
};

/// Answers each model call from a script, but only once the test
/// [`release`](GatedLlm::release)s it.
pub struct GatedLlm {
    script: Mutex<VecDeque<LlmResponse>>,
    /// One permit per call the test lets through.
    gate: Semaphore,
    /// One permit per call that arrived.
    arrived: Semaphore,
}

impl GatedLlm {
    pub fn new(script: Vec<LlmResponse>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
            gate: Semaphore::new(0),
            arrived: Semaphore::new(0),
        })
    }

    /// Waits until a model call has arrived (and is waiting at the gate).
    pub async fn called(&self) {
        self.arrived.acquire().await.unwrap().forget();
    }

    /// Lets one call through with the next answer of the script.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }
}

#[async_trait::async_trait]
impl LlmClient for GatedLlm {
    async fn chat(
        &self,
        _messages: &[Message],
        _tools: &[ToolSpec],
        _deadline: Option<tokio::time::Instant>,
    ) -> Result<LlmResponse, LlmError> {
        self.arrived.add_permits(1);
        self.gate.acquire().await.unwrap().forget();
        let next = self.script.lock().unwrap().pop_front();
        next.ok_or_else(|| LlmError::Http {
            provider: "gated".into(),
            status: 500,
            message: "script exhausted".into(),
        })
    }
    fn provider(&self) -> &str {
        "gated"
    }
    fn model(&self) -> &str {
        "gated-model"
    }
}

/// An answer calling one tool.
pub fn tool_call(name: &str, arguments: Value) -> LlmResponse {
    LlmResponse {
        content: String::new(),
        tool_calls: vec![ToolCall {
            call_id: "call-1".into(),
            name: name.into(),
            arguments,
            raw_arguments: None,
        }],
        model: "gated-model".into(),
        finish_reason: Some("tool_calls".into()),
        usage: Usage::default(),
    }
}

/// The answer that completes a task.
pub fn task_done() -> LlmResponse {
    LlmResponse {
        content: "all done".into(),
        ..tool_call("task_done", json!({}))
    }
}

/// An answer without tool calls: the step ends and the task goes on.
pub fn text(content: &str) -> LlmResponse {
    LlmResponse {
        content: content.into(),
        tool_calls: Vec::new(),
        model: "gated-model".into(),
        finish_reason: Some("stop".into()),
        usage: Usage::default(),
    }
}

/// A runner as `TaskManager::start` builds it, over a fresh SQLite file.
pub struct Harness {
    dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub events: Arc<EventLog>,
    pub runner: Arc<Runner>,
}

impl Harness {
    pub async fn new(settings: RunnerSettings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("agentd.db"))
                .await
                .unwrap(),
        );
        let metrics = Metrics::new();
        let events = Arc::new(EventLog::new(store.clone(), metrics.clone()));
        let processes =
            ProcessRecords::open(dir.path(), super::cgroups::Cgroups::off("tests")).unwrap();
        let runner = Arc::new(Runner::new(
            store.clone(),
            events.clone(),
            metrics,
            settings,
            processes,
        ));
        Self {
            dir,
            store,
            events,
            runner,
        }
    }

    /// Stores a task `running`, as a run's start does.
    pub async fn running_task(&self, task_id: &str) -> Task {
        let now = clock::now_ms();
        let task = Task {
            status: TaskStatus::Running,
            started_at: Some(now),
            ..Task::new(
                task_id.into(),
                "a task".into(),
                Map::new(),
                Origin::Trae,
                now,
            )
        };
        self.store.insert_task(&task).await.unwrap();
        task
    }

    /// An agent in the harness's directory with the named tools (and
    /// `task_done`), asking `llm`, reporting through a sink of `task_id`.
    pub async fn agent(&self, task_id: &str, llm: Arc<GatedLlm>, tools: &[&str]) -> RunPlan {
        let cfg = ResolvedConfig {
            tools: tools.iter().map(|t| t.to_string()).collect(),
            ..ResolvedConfig::defaults(Provider::OpenAi)
        };
        let sink = self.runner.sink(task_id);
        let agent = Agent::new(
            &cfg,
            llm,
            "a task",
            self.dir.path(),
            AgentOptions {
                tools: ToolSetOptions {
                    process_observer: Some(
                        self.runner.processes.observer(task_id, &Default::default()),
                    ),
                    ..ToolSetOptions::default()
                },
                ..AgentOptions::default()
            },
            Arc::new(sink.clone()),
        )
        .await
        .unwrap();
        RunPlan {
            agent,
            sink,
            started_ago: Duration::ZERO,
        }
    }

    /// Stores a running task and starts its background run.
    pub async fn start_run(&self, task_id: &str, llm: Arc<GatedLlm>, tools: &[&str]) {
        let task = self.running_task(task_id).await;
        let plan = self.agent(task_id, llm, tools).await;
        let slot = self.runner.admission.reserve().unwrap();
        self.runner.spawn_run(task, plan, Some(slot));
    }

    /// Lets the model answer while a requested stop arrives a little later
    /// each `round` (so either may win); returns whether the stop found the
    /// task still running.
    pub async fn answer_racing_a_stop(&self, task_id: &str, llm: &GatedLlm, round: usize) -> bool {
        let stop = async {
            for _ in 0..(round % 4) * 10 {
                tokio::task::yield_now().await;
            }
            self.runner
                .stop(task_id, StopReason::Requested)
                .await
                .unwrap()
        };
        let ((), stopped) = tokio::join!(async { llm.release() }, stop);
        stopped
    }

    /// Waits (bounded) until the task's log has its `end` and the runner
    /// has let go of the run.
    pub async fn wait_ended(&self, task_id: &str) {
        let ended = async {
            let mut log = std::pin::pin!(self.events.follow(task_id, 0).unwrap());
            while let Some(event) = log.next().await {
                event.unwrap();
            }
            while self.runner.active().contains_key(task_id) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), ended)
            .await
            .expect("the run ended");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Asserts that the task ended exactly once: its log has consecutive
    /// seqs, one terminal event that agrees with the stored status, and one
    /// `end`, last, carrying that status. Returns the task and its log.
    pub async fn ended_once(&self, task_id: &str) -> (Task, Vec<Event>) {
        let task = self.store.get_task(task_id).await.unwrap().unwrap();
        let log = self.store.list_events(task_id, 0, 10_000).await.unwrap();
        let seqs: Vec<i64> = log.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=log.len() as i64).collect::<Vec<_>>());
        let of = |kind: EventKind| log.iter().filter(|e| e.kind == kind.as_str()).count();
        let terminal = [EventKind::Complete, EventKind::Error, EventKind::Stopped];
        let counts: Vec<usize> = terminal.iter().map(|k| of(*k)).collect();
        assert_eq!(counts.iter().sum::<usize>(), 1, "terminal events: {log:#?}");
        assert_eq!(of(EventKind::End), 1, "{log:#?}");
        let end = log.last().unwrap();
        assert_eq!(end.kind, EventKind::End.as_str());
        assert_eq!(end.body["data"]["status"], task.status.as_str());
        let before_end = &log[log.len() - 2];
        let expected = match task.status {
            TaskStatus::Completed => EventKind::Complete,
            TaskStatus::Stopped => EventKind::Stopped,
            TaskStatus::Failed => EventKind::Error,
            other => panic!("task ended {other:?}"),
        };
        assert_eq!(before_end.kind, expected.as_str(), "{log:#?}");
        assert!(task.finished_at.is_some());
        (task, log)
    }
}
