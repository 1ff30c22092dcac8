//! Loop tests against an in-process scripted model (no HTTP).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;
use crate::config::{Provider, Secret};
use crate::llm::LlmError;
use crate::messages::ToolSpec;
use crate::testing::{ScriptedResponse, ScriptedServer};
use crate::tools::process_is_alive;

/// Answers with a script; records the conversation of every call.
struct ScriptedModel {
    script: Mutex<VecDeque<Result<LlmResponse, String>>>,
    seen: Mutex<Vec<Vec<Message>>>,
}

impl ScriptedModel {
    fn new(script: Vec<Result<LlmResponse, String>>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
            seen: Mutex::new(Vec::new()),
        })
    }
    fn conversations(&self) -> Vec<Vec<Message>> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl LlmClient for ScriptedModel {
    async fn chat(
        &self,
        messages: &[Message],
        _tools: &[ToolSpec],
        _deadline: Option<tokio::time::Instant>,
    ) -> Result<LlmResponse, LlmError> {
        self.seen.lock().unwrap().push(messages.to_vec());
        let next = self.script.lock().unwrap().pop_front();
        match next {
            Some(Ok(r)) => Ok(r),
            Some(Err(message)) => Err(LlmError::Http {
                provider: "openai".into(),
                status: 500,
                message,
            }),
            None => Ok(text("the script is over")),
        }
    }
    fn provider(&self) -> &str {
        "openai"
    }
    fn model(&self) -> &str {
        "gpt-4o"
    }
}

fn text(content: &str) -> LlmResponse {
    LlmResponse {
        content: content.into(),
        tool_calls: vec![],
        model: "gpt-4o".into(),
        finish_reason: Some("stop".into()),
        usage: Usage {
            input_tokens: 100,
            output_tokens: 10,
            ..Usage::default()
        },
    }
}

fn calls(content: &str, calls: &[(&str, Value)]) -> LlmResponse {
    let tool_calls = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| ToolCall {
            call_id: format!("call_{i}_{name}"),
            name: (*name).into(),
            arguments: args.clone(),
            raw_arguments: None,
        })
        .collect();
    LlmResponse {
        tool_calls,
        finish_reason: Some("tool_calls".into()),
        ..text(content)
    }
}

fn done(content: &str) -> LlmResponse {
    calls(content, &[("task_done", json!({}))])
}

fn config(max_steps: u32, parallel: bool) -> ResolvedConfig {
    let mut c = ResolvedConfig::defaults(Provider::OpenAi);
    c.max_steps = max_steps;
    c.parallel_tool_calls = parallel;
    c.tools = crate::tools::BUILTIN_TOOL_NAMES.map(String::from).to_vec();
    c.api_key = Some(Secret::new("sk-agent-test-secret"));
    c
}

fn options() -> AgentOptions {
    AgentOptions {
        tools: ToolSetOptions {
            bash_timeout: Duration::from_secs(60),
            kill_grace: Duration::from_millis(500),
            ..ToolSetOptions::default()
        },
        ..AgentOptions::default()
    }
}

async fn agent(
    model: &Arc<ScriptedModel>,
    dir: &Path,
    config: &ResolvedConfig,
    options: AgentOptions,
) -> (Agent, UnboundedReceiver<EngineEvent>) {
    let (tx, rx) = unbounded_channel();
    let llm: Arc<dyn LlmClient> = model.clone();
    let agent = Agent::new(config, llm, "Fix the bug.", dir, options, Arc::new(tx))
        .await
        .unwrap();
    (agent, rx)
}

fn drain(rx: &mut UnboundedReceiver<EngineEvent>) -> Vec<EngineEvent> {
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    events
}

fn git_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg("git init -q && git config user.email t@example.com && git config user.name t && echo 'print(1)' > app.py && git add . && git commit -qm init")
        .current_dir(dir.path())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    dir
}

fn tool_results_in(conversation: &[Message]) -> Vec<ToolResult> {
    conversation
        .iter()
        .filter_map(|m| m.tool_result.clone())
        .collect()
}

#[tokio::test]
async fn first_message_carries_project_root_and_task() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![Ok(done("ok"))]);
    let (mut agent, _rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    let outcome = agent.run(&CancellationToken::new()).await;
    assert_eq!(
        outcome,
        RunOutcome::Completed {
            result: "ok".into()
        }
    );
    let first = &model.conversations()[0];
    assert_eq!(first[0].role, Role::System);
    assert_eq!(
        first[1].content,
        format!(
            "[Project root path]:\n{}\n\n[Problem statement]: We're currently solving the following issue within our repository. Here's the issue text:\nFix the bug.\n",
            dir.path().display()
        )
    );
}

#[tokio::test]
async fn must_patch_sends_the_model_back_while_the_diff_is_empty() {
    let repo = git_repo();
    let root = repo.path();
    let patch = root.join("out/task.patch");
    let model = ScriptedModel::new(vec![
        Ok(done("finished?")),
        // Only a test file: still empty for the gate.
        Ok(calls(
            "",
            &[(
                "bash",
                json!({"command": "mkdir -p tests && echo 'assert 1' > tests/test_app.py"}),
            )],
        )),
        Ok(done("now?")),
        Ok(calls(
            "",
            &[(
                "str_replace_based_edit_tool",
                json!({"command": "create", "path": root.join("fix.py").display().to_string(), "file_text": "FIX = 1\n"}),
            )],
        )),
        Ok(done("Fixed it.")),
    ]);
    let opts = AgentOptions {
        must_patch: true,
        patch_path: Some(patch.clone()),
        ..options()
    };
    let (mut agent, mut rx) = agent(&model, root, &config(10, false), opts).await;
    let outcome = agent.run(&CancellationToken::new()).await;
    assert_eq!(
        outcome,
        RunOutcome::Completed {
            result: "Fixed it.".into()
        }
    );
    assert_eq!(agent.steps_taken(), 5);

    let conversations = model.conversations();
    let answer = tool_results_in(&conversations[1]).pop().unwrap();
    assert_eq!(answer.name, "task_done");
    assert!(!answer.success);
    assert_eq!(answer.error.as_deref(), Some(prompt::EMPTY_PATCH));
    let answer = tool_results_in(&conversations[3]).pop().unwrap();
    assert_eq!(answer.error.as_deref(), Some(prompt::EMPTY_PATCH));

    let written = std::fs::read_to_string(&patch).unwrap();
    assert!(
        written.contains("diff --git a/fix.py b/fix.py\nnew file mode"),
        "{written}"
    );
    assert!(written.contains("b/tests/test_app.py"));
    assert!(!written.contains("task.patch"));
    let events = drain(&mut rx);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, EngineEvent::Nudge { .. }))
            .count(),
        2
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EngineEvent::PatchWritten { .. }))
    );
    assert_eq!(
        events.last(),
        Some(&EngineEvent::Completed {
            result: "Fixed it.".into()
        })
    );
}

#[tokio::test]
async fn must_patch_needs_a_git_repository() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![]);
    let llm: Arc<dyn LlmClient> = model.clone();
    let opts = AgentOptions {
        must_patch: true,
        ..options()
    };
    let err = Agent::new(
        &config(3, false),
        llm,
        "t",
        dir.path(),
        opts,
        Arc::new(crate::events::NoEvents),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AgentError::NotAGitRepository(_)), "{err}");
}

#[tokio::test]
async fn running_out_of_steps_fails_with_traes_message() {
    let dir = tempfile::tempdir().unwrap();
    let think = json!({"thought": "hmm", "next_thought_needed": true, "thought_number": 1, "total_thoughts": 5});
    let model = ScriptedModel::new(vec![
        Ok(calls("", &[("sequentialthinking", think.clone())])),
        Ok(calls("", &[("sequentialthinking", think.clone())])),
        Ok(calls("", &[("sequentialthinking", think)])),
    ]);
    let trajectory = dir.path().join("traj.json");
    let opts = AgentOptions {
        trajectory_file: Some(trajectory.clone()),
        ..options()
    };
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(2, false), opts).await;
    let cancel = CancellationToken::new();
    let first = agent.step(&cancel, None).await;
    assert!(!first.is_last && first.outcome.is_none());
    let second = agent.step(&cancel, None).await;
    assert!(second.is_last);
    let expected = RunOutcome::Failed {
        error: MAX_STEPS_EXCEEDED.into(),
        kind: FailureKind::MaxSteps,
    };
    assert_eq!(second.outcome.as_ref(), Some(&expected));
    assert_eq!(model.conversations().len(), 2);
    // Further steps do nothing and repeat the outcome.
    let again = agent.step(&cancel, None).await;
    assert_eq!(again.outcome, Some(expected));
    assert_eq!(model.conversations().len(), 2);

    let events = drain(&mut rx);
    assert!(matches!(
        events.last(),
        Some(EngineEvent::Failed {
            kind: FailureKind::MaxSteps,
            ..
        })
    ));
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&trajectory).unwrap()).unwrap();
    assert_eq!(t["success"], false);
    assert_eq!(t["final_result"], MAX_STEPS_EXCEEDED);
    assert_eq!(t["agent_steps"].as_array().unwrap().len(), 2);
    assert_eq!(t["llm_interactions"].as_array().unwrap().len(), 2);
    assert!(
        !std::fs::read_to_string(&trajectory)
            .unwrap()
            .contains("sk-agent-test-secret")
    );
}

#[tokio::test]
async fn malformed_tool_arguments_are_answered_as_tool_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut broken = calls("", &[("bash", Value::Null)]);
    broken.tool_calls[0].raw_arguments = Some("{\"command\": \"ls".into());
    let model = ScriptedModel::new(vec![
        Ok(broken),
        Ok(calls(
            "",
            &[("str_replace_based_edit_tool", json!({"command": "view"}))],
        )),
        Ok(done("done")),
    ]);
    let (mut agent, _rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    let outcome = agent.run(&CancellationToken::new()).await;
    assert!(outcome.is_success(), "{outcome:?}");
    let conversations = model.conversations();
    let r = tool_results_in(&conversations[1]).pop().unwrap();
    assert_eq!(r.call_id, "call_0_bash");
    assert!(!r.success);
    assert!(r.error.unwrap().contains("not valid JSON"));
    let r = tool_results_in(&conversations[2]).pop().unwrap();
    assert_eq!(
        r.error.as_deref(),
        Some("No path provided for the str_replace_based_edit_tool tool")
    );
}

#[tokio::test]
async fn a_response_without_tool_calls_is_nudged() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![
        Ok(text("I think I am done.")),
        Ok(done("Really done.")),
    ]);
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    let first = agent.step(&CancellationToken::new(), None).await;
    assert_eq!(first.output, "I think I am done.");
    assert!(!first.is_last);
    let outcome = agent.run(&CancellationToken::new()).await;
    assert!(outcome.is_success());
    let second_call = &model.conversations()[1];
    let last = second_call.last().unwrap();
    assert_eq!(
        (last.role, last.content.as_str()),
        (Role::User, "It seems that you have not completed the task.")
    );
    assert!(drain(&mut rx).contains(&EngineEvent::Nudge {
        step: 1,
        message: prompt::NO_TOOL_CALL.into()
    }));
}

#[tokio::test]
async fn steps_take_extra_user_input_and_account_usage() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![Ok(text("thinking")), Ok(done("done"))]);
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    let cancel = CancellationToken::new();
    agent.step(&cancel, None).await;
    let last = agent
        .step(&cancel, Some("Please also update the docs.".into()))
        .await;
    assert!(last.is_last);
    assert_eq!(
        last.outcome,
        Some(RunOutcome::Completed {
            result: "done".into()
        })
    );
    let conversation = &model.conversations()[1];
    assert_eq!(
        conversation.last().unwrap().content,
        "Please also update the docs."
    );
    assert_eq!(agent.usage().input_tokens, 200);
    assert_eq!(agent.usage().output_tokens, 20);
    assert!(agent.cost_usd() > 0.0, "gpt-4o has a price");
    let events = drain(&mut rx);
    let totals: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Usage { total, .. } => Some(total.input_tokens),
            _ => None,
        })
        .collect();
    assert_eq!(totals, [100, 200]);
}

#[tokio::test]
async fn parallel_tool_calls_are_answered_in_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "x\n").unwrap();
    let path = file.display().to_string();
    let model = ScriptedModel::new(vec![Ok(calls(
        "",
        &[
            ("bash", json!({"command": "sleep 0.3; echo slow"})),
            (
                "str_replace_based_edit_tool",
                json!({"command": "view", "path": path}),
            ),
            ("nonexistent_tool", json!({})),
        ],
    ))]);
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(1, true), options()).await;
    let step = agent.step(&CancellationToken::new(), None).await;
    let ids: Vec<_> = step
        .tool_results
        .iter()
        .map(|r| r.call_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "call_0_bash",
            "call_1_str_replace_based_edit_tool",
            "call_2_nonexistent_tool"
        ]
    );
    assert_eq!(step.tool_results[0].result, "slow");
    assert!(!step.tool_results[2].success);
    // Every call got a result message, in order, after the assistant turn.
    let tail: Vec<_> = agent
        .messages()
        .iter()
        .rev()
        .take(3)
        .filter_map(|m| m.tool_result.as_ref())
        .collect();
    assert_eq!(tail.len(), 3);
    let events = drain(&mut rx);
    let starts = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::ToolCall { .. }))
        .count();
    let ends = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::ToolResult { .. }))
        .count();
    assert_eq!((starts, ends), (3, 3));
}

#[tokio::test]
async fn provider_failure_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![Err("overloaded".into())]);
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    let outcome = agent.run(&CancellationToken::new()).await;
    match outcome {
        RunOutcome::Failed {
            error,
            kind: FailureKind::Provider,
        } => assert!(error.contains("overloaded"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        drain(&mut rx).last(),
        Some(EngineEvent::Failed {
            kind: FailureKind::Provider,
            ..
        })
    ));
}

/// Under `retry_failed_steps`, against the real OpenAI client and a
/// scripted server: a 500 (no retries) rolls the step back, the retry runs
/// as the same step, and the run completes.
#[tokio::test]
async fn a_failed_model_call_is_rolled_back_for_a_retry() {
    use crate::testing;

    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedServer::start(vec![
        ScriptedResponse::error(500, "upstream exploded"),
        ScriptedResponse::ok(testing::openai::tool_call(
            "call_1",
            "bash",
            r#"{"command":"echo hi"}"#,
        )),
        ScriptedResponse::ok(testing::openai::response(
            Some("All done."),
            &[("call_2", "task_done", "{}")],
        )),
    ])
    .await
    .unwrap();
    let mut cfg = server.config(Provider::OpenAi);
    assert_eq!(cfg.max_retries, 0);
    cfg.tools = crate::tools::BUILTIN_TOOL_NAMES.map(String::from).to_vec();
    let llm = llm::client_for(&cfg).unwrap();
    let trajectory = dir.path().join("traj.json");
    let opts = AgentOptions {
        retry_failed_steps: true,
        trajectory_file: Some(trajectory.clone()),
        ..options()
    };
    let (tx, mut rx) = unbounded_channel();
    let mut agent = Agent::new(&cfg, llm, "Fix the bug.", dir.path(), opts, Arc::new(tx))
        .await
        .unwrap();
    let before = agent.messages().to_vec();
    let cancel = CancellationToken::new();
    let input = "Say hi first.";

    let failed = agent.step(&cancel, Some(input.into())).await;
    assert_eq!(
        (failed.step_number, failed.is_last, &failed.outcome),
        (1, false, &None)
    );
    let failure = failed.provider_error.clone().expect("provider error");
    assert_eq!(
        (failure.provider.as_str(), failure.status),
        ("openai", Some(500))
    );
    assert_eq!(
        failure.message,
        "openai answered HTTP 500: upstream exploded"
    );
    assert_eq!(agent.steps_taken(), 0);
    assert_eq!(agent.messages(), before.as_slice(), "input taken back");
    assert!(!agent.is_finished());
    assert_eq!(
        drain(&mut rx),
        [
            EngineEvent::StepStarted { step: 1 },
            EngineEvent::StepFailed {
                step: 1,
                error: failure.message.clone(),
                status: Some(500),
            },
        ]
    );

    // The caller sends the input again: the same request, as step 1.
    let retried = agent.step(&cancel, Some(input.into())).await;
    assert_eq!((retried.step_number, retried.is_last), (1, false));
    assert_eq!(retried.provider_error, None);
    assert_eq!(retried.tool_results[0].result, "hi");
    let requests = server.requests();
    assert_eq!(requests[0].body, requests[1].body);
    let inputs = agent
        .messages()
        .iter()
        .filter(|m| m.content == input)
        .count();
    assert_eq!(inputs, 1);
    assert!(matches!(
        drain(&mut rx).first(),
        Some(EngineEvent::StepStarted { step: 1 })
    ));

    let last = agent.step(&cancel, None).await;
    assert_eq!(last.step_number, 2);
    assert_eq!(
        last.outcome,
        Some(RunOutcome::Completed {
            result: "All done.".into()
        })
    );
    assert_eq!(last.provider_error, None);

    // The failed attempt is in the trajectory; its input is recorded once,
    // with the attempt that the model answered.
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&trajectory).unwrap()).unwrap();
    let steps = t["agent_steps"].as_array().unwrap();
    let states: Vec<_> = steps
        .iter()
        .map(|s| {
            (
                s["step_number"].as_u64().unwrap(),
                s["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(states, [(1, "error"), (1, "completed"), (2, "completed")]);
    let error = steps[0]["error"].as_str().unwrap();
    assert!(error.contains("upstream exploded"), "{error}");
    let interactions = t["llm_interactions"].as_array().unwrap();
    assert_eq!(interactions.len(), 2);
    assert_eq!(
        interactions[0]["input_messages"].as_array().unwrap().len(),
        3
    );
}

#[tokio::test]
async fn without_retry_failed_steps_a_failed_step_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![Err("overloaded".into()), Ok(done("never"))]);
    let (mut agent, _rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    let step = agent
        .step(&CancellationToken::new(), Some("more".into()))
        .await;
    assert!(step.is_last);
    assert_eq!(step.provider_error, None);
    assert!(matches!(
        step.outcome,
        Some(RunOutcome::Failed {
            kind: FailureKind::Provider,
            ..
        })
    ));
    assert_eq!(agent.steps_taken(), 1);
}

#[tokio::test]
async fn run_ends_on_a_provider_failure_even_with_retry_failed_steps() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![Err("overloaded".into()), Ok(done("never"))]);
    let opts = AgentOptions {
        retry_failed_steps: true,
        ..options()
    };
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(5, false), opts).await;
    let outcome = agent.run(&CancellationToken::new()).await;
    match outcome {
        RunOutcome::Failed {
            error,
            kind: FailureKind::Provider,
        } => assert_eq!(
            error,
            "LLM call failed: openai answered HTTP 500: overloaded"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(model.conversations().len(), 1, "not retried by run()");
    let events = drain(&mut rx);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EngineEvent::StepFailed { .. }))
    );
    assert!(matches!(events.last(), Some(EngineEvent::Failed { .. })));
}

/// The deadline reaches the client with every model call.
#[tokio::test]
async fn the_deadline_applies_to_every_later_model_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedServer::start_with_fallback(
        vec![],
        ScriptedResponse::ok(crate::testing::openai::text("late"))
            .with_delay(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let mut cfg = server.config(Provider::OpenAi);
    cfg.max_retries = 10;
    let llm = llm::client_for(&cfg).unwrap();
    let (tx, _rx) = unbounded_channel();
    let mut agent = Agent::new(&cfg, llm, "t", dir.path(), options(), Arc::new(tx))
        .await
        .unwrap();
    agent.set_deadline(Some(
        tokio::time::Instant::now() + Duration::from_millis(500),
    ));
    let started = Instant::now();
    let step = tokio::time::timeout(
        Duration::from_secs(30),
        agent.step(&CancellationToken::new(), None),
    )
    .await
    .expect("the deadline applies");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match step.outcome {
        Some(RunOutcome::Failed {
            error,
            kind: FailureKind::Provider,
        }) => assert!(
            error.contains("time left for the step/task ran out"),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
}

async fn wait_for_file(path: &Path) -> String {
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn cancelling_during_a_long_bash_command_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![Ok(calls(
        "",
        &[(
            "bash",
            json!({"command": "echo $$ > shell.pid; sleep 300 & echo $! > sleep.pid; sleep 301"}),
        )],
    ))]);
    let trajectory = dir.path().join("t.json");
    let opts = AgentOptions {
        trajectory_file: Some(trajectory.clone()),
        ..options()
    };
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(5, false), opts).await;
    let cancel = CancellationToken::new();
    let run = {
        let cancel = cancel.clone();
        tokio::spawn(async move { (agent.run(&cancel).await, agent) })
    };
    let sleep_pid: i32 = wait_for_file(&dir.path().join("sleep.pid"))
        .await
        .trim()
        .parse()
        .unwrap();
    let shell_pid: i32 = wait_for_file(&dir.path().join("shell.pid"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(process_is_alive(sleep_pid));
    cancel.cancel();
    let (outcome, agent) = run.await.unwrap();
    assert_eq!(
        outcome,
        RunOutcome::Stopped {
            reason: "cancelled".into()
        }
    );
    assert!(!process_is_alive(sleep_pid), "background sleep survived");
    assert!(!process_is_alive(shell_pid), "bash survived");
    assert!(agent.is_finished());
    assert!(matches!(
        drain(&mut rx).last(),
        Some(EngineEvent::Stopped { .. })
    ));
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&trajectory).unwrap()).unwrap();
    assert_eq!(t["agent_steps"][0]["state"], "error");
    assert_eq!(t["success"], false);
}

#[tokio::test]
async fn stopping_between_steps_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![Ok(calls(
        "",
        &[(
            "bash",
            json!({"command": "sleep 300 > /dev/null 2>&1 & echo $!"}),
        )],
    ))]);
    let (mut agent, _rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    let step = agent.step(&CancellationToken::new(), None).await;
    let pid: i32 = step.tool_results[0].result.trim().parse().unwrap();
    assert!(process_is_alive(pid));
    let outcome = agent.stop("deleted by user").await;
    assert_eq!(
        outcome,
        RunOutcome::Stopped {
            reason: "deleted by user".into()
        }
    );
    assert!(!process_is_alive(pid));
    // A cancelled token also ends a run before its next step.
    let model = ScriptedModel::new(vec![]);
    let (mut agent, _rx) = self::agent(&model, dir.path(), &config(5, false), options()).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let step = agent.step(&cancel, None).await;
    assert!(step.is_last);
    assert!(model.conversations().is_empty());
}

#[tokio::test]
async fn bad_working_dirs_and_tools_are_refused() {
    let model = ScriptedModel::new(vec![]);
    let llm: Arc<dyn LlmClient> = model.clone();
    let sink = Arc::new(crate::events::NoEvents);
    let err = Agent::new(
        &config(3, false),
        llm.clone(),
        "t",
        "relative/dir",
        options(),
        sink.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AgentError::BadWorkingDir(_)));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(3, false);
    cfg.tools = vec!["bash".into(), "lsp".into()];
    let err = Agent::new(&cfg, llm.clone(), "t", dir.path(), options(), sink.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown tool `lsp`"), "{err}");
    cfg.tools = vec!["bash".into(), "ckg".into()];
    let agent = Agent::new(&cfg, llm.clone(), "t", dir.path(), options(), sink.clone())
        .await
        .unwrap();
    assert_eq!(agent.tools().names(), ["bash", "ckg", "task_done"]);
    // task_done is always offered.
    cfg.tools = vec!["bash".into()];
    let agent = Agent::new(&cfg, llm, "t", dir.path(), options(), sink)
        .await
        .unwrap();
    assert_eq!(agent.tools().names(), ["bash", "task_done"]);
}

#[tokio::test]
async fn a_run_at_its_token_budget_stops_before_the_next_model_call() {
    // 110 tokens a call: after 3 calls the 330-token budget is spent.
    let model = ScriptedModel::new((0..6).map(|_| Ok(text("still working"))).collect());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(10, false);
    cfg.budget.max_tokens_total = Some(5); // the request's limit wins
    let opts = AgentOptions {
        budget: Budget {
            max_tokens_total: Some(330),
            ..Budget::default()
        },
        ..options()
    };
    let (mut run, mut rx) = agent(&model, dir.path(), &cfg, opts).await;
    let outcome = run.run(&CancellationToken::new()).await;
    assert_eq!(model.conversations().len(), 3);
    let RunOutcome::Failed { error, kind } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(*kind, FailureKind::Budget);
    assert!(
        error.starts_with(
            "Budget exceeded: max_tokens_total is 330 tokens and the task has spent 330 tokens"
        ),
        "{error}"
    );
    let events = drain(&mut rx);
    let exceeded = events
        .iter()
        .find_map(|e| match e {
            EngineEvent::BudgetExceeded { step, exceeded } => Some((*step, exceeded.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        exceeded,
        (
            3,
            BudgetExceeded {
                budget: BudgetLimit::TokensTotal,
                limit: 330.0,
                spent: 330.0,
                next_call_at_least: 100.0
            }
        )
    );
    assert!(matches!(events.last(), Some(EngineEvent::Failed { .. })));
    assert_eq!(run.steps_taken(), 3);

    // A call the budget could not pay for is not made either: after two
    // calls (220), the next sends at least the last input (100) again.
    let model = ScriptedModel::new((0..6).map(|_| Ok(text("still working"))).collect());
    let opts = AgentOptions {
        budget: Budget {
            max_tokens_total: Some(300),
            ..Budget::default()
        },
        ..options()
    };
    let (mut run, _rx) = agent(&model, dir.path(), &config(10, false), opts).await;
    let outcome = run.run(&CancellationToken::new()).await;
    assert_eq!(model.conversations().len(), 2, "{outcome:?}");
}

#[tokio::test]
async fn wall_time_and_cost_budgets_are_checked_before_each_call() {
    let model = ScriptedModel::new(vec![Ok(text("working")), Ok(done("done"))]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(10, false);
    cfg.budget.max_wall_secs = Some(1e-9);
    let (mut run, _rx) = agent(&model, dir.path(), &cfg, options()).await;
    let outcome = run.run(&CancellationToken::new()).await;
    assert!(
        matches!(&outcome, RunOutcome::Failed { kind: FailureKind::Budget, error } if error.contains("max_wall_secs")),
        "{outcome:?}"
    );
    assert!(model.conversations().is_empty());

    // gpt-4o: 100 input + 10 output tokens cost $0.00035.
    let model = ScriptedModel::new((0..6).map(|_| Ok(text("working"))).collect());
    let mut cfg = config(10, false);
    cfg.budget.max_cost_usd = Some(0.0008);
    let (mut run, _rx) = agent(&model, dir.path(), &cfg, options()).await;
    let outcome = run.run(&CancellationToken::new()).await;
    assert!(
        matches!(&outcome, RunOutcome::Failed { kind: FailureKind::Budget, error } if error.contains("max_cost_usd")),
        "{outcome:?}"
    );
    assert_eq!(model.conversations().len(), 2);
}

// ---- lakeview ---------------------------------------------------------------

/// A lakeview model whose calls wait until it is opened.
struct GatedModel {
    inner: Arc<ScriptedModel>,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl LlmClient for GatedModel {
    async fn chat(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<LlmResponse, LlmError> {
        let _open = self.gate.acquire().await.unwrap();
        self.inner.chat(messages, tools, deadline).await
    }
    fn provider(&self) -> &str {
        "openai"
    }
    fn model(&self) -> &str {
        "gpt-4o-mini"
    }
}

fn lakeview_events(events: &[EngineEvent]) -> Vec<(u32, String, String, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Lakeview {
                step,
                task,
                details,
                tags,
            } => Some((*step, task.clone(), details.clone(), tags.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lakeview_summarises_each_step_beside_the_loop_and_counts_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![
        Ok(calls("Let me look.", &[("bash", json!({"command": "ls"}))])),
        Ok(done("done")),
    ]);
    let lakeview = Arc::new(GatedModel {
        inner: ScriptedModel::new(vec![
            Ok(text(
                " is listing files.</task><details>Runs ls in the repo.</details>",
            )),
            Ok(text("EXAMINE_CODE</tags>")),
            // Unreadable at first: asked again.
            Ok(text("no idea")),
            Ok(text(
                " is finishing.</task><details>Calls task_done.</details>",
            )),
            Ok(text("REPORT</tags>")),
        ]),
        gate: tokio::sync::Semaphore::new(0),
    });
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    agent.set_lakeview(lakeview.clone());
    let run = tokio::spawn(async move {
        let outcome = agent.run(&CancellationToken::new()).await;
        (agent, outcome)
    });
    // Both steps run while the lakeview model has not answered once.
    tokio::time::timeout(Duration::from_secs(30), async {
        while model.conversations().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the second step did not wait for lakeview");
    assert!(lakeview.inner.conversations().is_empty());
    lakeview.gate.add_permits(100);
    let (agent, outcome) = run.await.unwrap();
    assert!(outcome.is_success(), "{outcome:?}");

    let events = drain(&mut rx);
    assert_eq!(
        lakeview_events(&events),
        [
            (
                1,
                "The agent is listing files.".to_string(),
                "Runs ls in the repo.".to_string(),
                vec!["EXAMINE_CODE".to_string()]
            ),
            (
                2,
                "The agent is finishing.".to_string(),
                "Calls task_done.".to_string(),
                vec!["REPORT".to_string()]
            ),
        ]
    );
    // Before the run's end.
    let last_lakeview = events
        .iter()
        .rposition(|e| matches!(e, EngineEvent::Lakeview { .. }));
    let completed = events
        .iter()
        .position(|e| matches!(e, EngineEvent::Completed { .. }));
    assert!(last_lakeview < completed, "{events:#?}");

    // The second step's summary saw the first step; its tagger saw it too.
    let asked = lakeview.inner.conversations();
    assert_eq!(asked.len(), 5);
    assert!(
        asked[0][0]
            .content
            .contains("<previous_step>(none)</previous_step>")
    );
    assert!(
        asked[0][0]
            .content
            .contains("[`bash`] `{\"command\":\"ls\"}`")
    );
    assert!(asked[2][0].content.contains("<previous_step>Let me look."));
    assert!(
        asked[4][0]
            .content
            .contains("<step id=\"1\">\nLet me look.")
    );
    assert_eq!(asked[0].last().unwrap().role, Role::Assistant);

    // 2 agent calls and 5 lakeview calls of 100 input tokens each, in order.
    assert_eq!(agent.usage().input_tokens, 700);
    let usage: Vec<(u64, bool)> = events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Usage {
                total, lakeview, ..
            } => Some((total.input_tokens, *lakeview)),
            _ => None,
        })
        .collect();
    assert_eq!(usage.len(), 7);
    assert_eq!(usage.iter().filter(|(_, lv)| *lv).count(), 5);
    assert!(usage.windows(2).all(|w| w[0].0 < w[1].0), "{usage:?}");
}

#[tokio::test]
async fn a_failing_lakeview_model_does_not_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![
        Ok(calls("Let me look.", &[("bash", json!({"command": "ls"}))])),
        Ok(done("done")),
    ]);
    let lakeview = ScriptedModel::new(vec![Err("down".into()), Err("down".into())]);
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    agent.set_lakeview(lakeview.clone());
    let outcome = agent.run(&CancellationToken::new()).await;
    assert!(outcome.is_success(), "{outcome:?}");
    let events = drain(&mut rx);
    assert!(lakeview_events(&events).is_empty(), "{events:#?}");
    // One failed summary call per step; no tag call after it.
    assert_eq!(lakeview.conversations().len(), 2);
    assert_eq!(agent.usage().input_tokens, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_for_lakeview() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(vec![Ok(calls(
        "Let me look.",
        &[("bash", json!({"command": "ls"}))],
    ))]);
    let lakeview = Arc::new(GatedModel {
        inner: ScriptedModel::new(vec![]),
        gate: tokio::sync::Semaphore::new(0),
    });
    let (mut agent, mut rx) = agent(&model, dir.path(), &config(5, false), options()).await;
    agent.set_lakeview(lakeview.clone());
    let cancel = CancellationToken::new();
    let step = agent.step(&cancel, None).await;
    assert!(!step.is_last);
    cancel.cancel();
    let outcome = tokio::time::timeout(lakeview::DRAIN / 2, agent.run(&cancel))
        .await
        .expect("the stop waited for lakeview");
    assert!(matches!(outcome, RunOutcome::Stopped { .. }), "{outcome:?}");
    assert!(lakeview_events(&drain(&mut rx)).is_empty());
    assert!(lakeview.inner.conversations().is_empty());
}

/// The checkpoint deltas among `events`.
fn checkpoints(events: &[EngineEvent]) -> Vec<CheckpointDelta> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Checkpoint(d) => Some((**d).clone()),
            _ => None,
        })
        .collect()
}

/// A run cut off while step 2's tool ran: resumed from its checkpoints, the
/// model gets the whole earlier conversation with that call answered as
/// interrupted, step 1 is not run again, the totals add up over both
/// attempts and the trajectory holds every step.
#[tokio::test]
async fn a_run_resumes_from_its_checkpoint_after_a_cut_off_step() {
    let dir = tempfile::tempdir().unwrap();
    let trajectory = dir.path().join("trajectory.json");
    let opts = || AgentOptions {
        trajectory_file: Some(trajectory.clone()),
        ..options()
    };
    let first = ScriptedModel::new(vec![
        Ok(calls(
            "",
            &[("bash", json!({"command": "echo one >> log.txt"}))],
        )),
        Ok(calls("", &[("bash", json!({"command": "sleep 30"}))])),
    ]);
    let (mut agent, mut rx) = agent(&first, dir.path(), &config(10, false), opts()).await;
    let cancel = CancellationToken::new();
    assert!(!agent.step(&cancel, None).await.is_last);
    let mut seen = drain(&mut rx);
    // Step 2 runs until its tool call is checkpointed as in flight, then "dies".
    let step = tokio::spawn(async move {
        let outcome = agent.step(&cancel, None).await;
        (agent, outcome)
    });
    loop {
        let e = rx.recv().await.unwrap();
        let in_flight = matches!(&e, EngineEvent::Checkpoint(d) if d.in_flight);
        seen.push(e);
        if in_flight {
            break;
        }
    }
    step.abort();
    let _ = step.await;
    let deltas = checkpoints(&seen);
    assert_eq!(
        deltas
            .iter()
            .map(|d| (d.step, d.in_flight))
            .collect::<Vec<_>>(),
        [(1, true), (1, false), (2, true)]
    );
    // Deltas only carry what is new.
    assert_eq!(
        deltas[1].first_message,
        deltas[0].first_message + deltas[0].messages.len()
    );
    let cp = Checkpoint::from_deltas(deltas).unwrap().unwrap();
    assert_eq!(cp.totals.usage.input_tokens, 200);

    let second = ScriptedModel::new(vec![Ok(done("finished"))]);
    let (tx, mut rx) = unbounded_channel();
    let llm: Arc<dyn LlmClient> = second.clone();
    let mut resumed = Agent::resume(
        &config(10, false),
        llm,
        "Fix the bug.",
        dir.path(),
        opts(),
        Arc::new(tx),
        Some(cp),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(resumed.steps_taken(), 2);
    let outcome = resumed.run(&CancellationToken::new()).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(resumed.steps_taken(), 3);
    assert_eq!(resumed.usage().input_tokens, 300);

    let conversation = &second.conversations()[0];
    let results = tool_results_in(conversation);
    assert_eq!(results.len(), 2);
    assert!(results[0].success);
    assert_eq!(results[1].call_id, "call_0_bash");
    assert!(!results[1].success);
    assert_eq!(results[1].error.as_deref(), Some(INTERRUPTED_TOOL_RESULT));
    assert_eq!(conversation[1].content, first.conversations()[0][1].content);
    // The step that was cut off is reported, and checkpointed as completed.
    let events = drain(&mut rx);
    assert!(matches!(&events[0], EngineEvent::ToolResult { step: 2, result } if !result.success));
    let after = checkpoints(&events);
    assert_eq!((after[0].step, after[0].in_flight), (2, false));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log.txt")).unwrap(),
        "one\n"
    );

    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&trajectory).unwrap()).unwrap();
    let steps: Vec<u64> = saved["agent_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_number"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    assert_eq!(saved["llm_interactions"].as_array().unwrap().len(), 3);
    assert_eq!(saved["success"], true);
}

/// Resumed between steps (the crash hit a model call): the model is told
/// that the environment was restarted, and the step is taken again.
#[tokio::test]
async fn a_run_resumed_between_steps_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let first = ScriptedModel::new(vec![Ok(text("thinking"))]);
    let (mut agent, mut rx) = agent(&first, dir.path(), &config(10, false), options()).await;
    agent.step(&CancellationToken::new(), None).await;
    drop(agent);
    let cp = Checkpoint::from_deltas(checkpoints(&drain(&mut rx)))
        .unwrap()
        .unwrap();
    assert_eq!((cp.step, cp.in_flight), (1, false));
    let second = ScriptedModel::new(vec![Ok(done("ok"))]);
    let llm: Arc<dyn LlmClient> = second.clone();
    let mut resumed = Agent::resume(
        &config(10, false),
        llm,
        "Fix the bug.",
        dir.path(),
        options(),
        Arc::new(crate::events::NoEvents),
        Some(cp),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert!(resumed.run(&CancellationToken::new()).await.is_success());
    let conversation = &second.conversations()[0];
    assert_eq!(conversation.last().unwrap().content, RESUMED_BETWEEN_STEPS);
    assert_eq!(resumed.steps_taken(), 2);
}

/// A crash while the last checkpoint was being written leaves the ones
/// before it: resuming from any prefix of the deltas is a consistent run
/// (here: step 2's in-flight checkpoint lost, so step 2 is taken again).
#[tokio::test]
async fn a_lost_last_checkpoint_resumes_from_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let first = ScriptedModel::new(vec![
        Ok(calls(
            "",
            &[("bash", json!({"command": "echo one >> log.txt"}))],
        )),
        Ok(calls(
            "",
            &[("bash", json!({"command": "echo two >> log.txt"}))],
        )),
    ]);
    let (mut agent, mut rx) = agent(&first, dir.path(), &config(10, false), options()).await;
    let cancel = CancellationToken::new();
    agent.step(&cancel, None).await;
    agent.step(&cancel, None).await;
    drop(agent);
    let deltas = checkpoints(&drain(&mut rx));
    assert_eq!(deltas.len(), 4);
    let cp = Checkpoint::from_deltas(deltas[..2].to_vec())
        .unwrap()
        .unwrap();
    assert_eq!((cp.step, cp.in_flight), (1, false));
    let second = ScriptedModel::new(vec![Ok(done("ok"))]);
    let llm: Arc<dyn LlmClient> = second.clone();
    let mut resumed = Agent::resume(
        &config(10, false),
        llm,
        "Fix the bug.",
        dir.path(),
        options(),
        Arc::new(crate::events::NoEvents),
        Some(cp),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert!(resumed.run(&CancellationToken::new()).await.is_success());
    assert_eq!(resumed.steps_taken(), 2);
    // One tool result (step 1's) before the note: step 2 never reached the model.
    assert_eq!(tool_results_in(&second.conversations()[0]).len(), 1);
    assert_eq!(resumed.usage().input_tokens, 200);
}
