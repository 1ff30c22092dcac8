//! A full run through the OpenAI-compatible Chat Completions client.

use agentd_engine::agent::RunOutcome;
use agentd_engine::config::Provider;
use agentd_engine::testing::{ScriptedResponse, ScriptedServer, openai};
use serde_json::{Value, json};

use crate::support::{self, CHECK_COMMAND, FINAL_TEXT, NEW, OLD, Repo};

fn call(id: &str, name: &str, args: Value) -> ScriptedResponse {
    ScriptedResponse::ok(openai::response(None, &[(id, name, &args.to_string())]))
}

#[tokio::test]
async fn view_edit_create_run_and_finish() {
    let repo = Repo::new();
    let server = ScriptedServer::start(vec![
        call("call_1", "str_replace_based_edit_tool", json!({"command": "view", "path": repo.file("calc.py")})),
        call(
            "call_2",
            "str_replace_based_edit_tool",
            json!({"command": "str_replace", "path": repo.file("calc.py"), "old_str": OLD, "new_str": NEW}),
        ),
        call(
            "call_3",
            "str_replace_based_edit_tool",
            json!({"command": "create", "path": repo.file("helpers.py"), "file_text": "def double(x):\n    return x * 2\n"}),
        ),
        call("call_4", "bash", json!({"command": CHECK_COMMAND})),
        ScriptedResponse::ok(openai::response(Some(FINAL_TEXT), &[("call_5", "task_done", "{}")])),
    ])
    .await
    .expect("server");

    let (outcome, events) = support::run(&repo, server.config(Provider::OpenAi)).await;
    assert_eq!(
        outcome,
        RunOutcome::Completed {
            result: FINAL_TEXT.into()
        }
    );
    support::check_patch(&repo);
    support::check_trajectory(&repo, "openai");
    support::check_events(&events);

    // What the provider saw: all five tools, and each call answered by a
    // `tool` message with its id in the next request.
    let requests = server.requests();
    assert_eq!(requests.len(), 5);
    let first = requests[0].json();
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(
        tools,
        [
            "bash",
            "str_replace_based_edit_tool",
            "sequentialthinking",
            "task_done",
            "json_edit_tool",
            "ckg"
        ]
    );
    for (i, request) in requests.iter().enumerate().skip(1) {
        let body = request.json();
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .cloned()
            .unwrap_or_default();
        assert_eq!(last["role"], "tool", "request {i}: {last}");
        assert_eq!(last["tool_call_id"], format!("call_{i}"));
    }
}
