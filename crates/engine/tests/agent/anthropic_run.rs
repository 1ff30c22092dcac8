//! A full run through the Anthropic Messages client.

use agentd_engine::agent::RunOutcome;
use agentd_engine::config::Provider;
use agentd_engine::testing::{ScriptedResponse, ScriptedServer, anthropic};
use serde_json::{Value, json};

use crate::support::{self, CHECK_COMMAND, FINAL_TEXT, NEW, OLD, Repo};

fn call(id: &str, name: &str, input: Value) -> ScriptedResponse {
    ScriptedResponse::ok(anthropic::response(None, &[(id, name, input)]))
}

#[tokio::test]
async fn view_edit_create_run_and_finish() {
    let repo = Repo::new();
    let server = ScriptedServer::start(vec![
        call("toolu_1", "str_replace_based_edit_tool", json!({"command": "view", "path": repo.file("calc.py")})),
        call(
            "toolu_2",
            "str_replace_based_edit_tool",
            json!({"command": "str_replace", "path": repo.file("calc.py"), "old_str": OLD, "new_str": NEW}),
        ),
        call(
            "toolu_3",
            "str_replace_based_edit_tool",
            json!({"command": "create", "path": repo.file("helpers.py"), "file_text": "def double(x):\n    return x * 2\n"}),
        ),
        call("toolu_4", "bash", json!({"command": CHECK_COMMAND})),
        ScriptedResponse::ok(anthropic::response(Some(FINAL_TEXT), &[("toolu_5", "task_done", json!({}))])),
    ])
    .await
    .expect("server");

    let (outcome, events) = support::run(&repo, server.config(Provider::Anthropic)).await;
    assert_eq!(
        outcome,
        RunOutcome::Completed {
            result: FINAL_TEXT.into()
        }
    );
    support::check_patch(&repo);
    support::check_trajectory(&repo, "anthropic");
    support::check_events(&events);

    // Each tool_use is answered by a tool_result block in the next request.
    let requests = server.requests();
    assert_eq!(requests.len(), 5);
    assert_eq!(
        requests[0].json()["tools"].as_array().map(Vec::len),
        Some(agentd_engine::tools::BUILTIN_TOOL_NAMES.len())
    );
    for (i, request) in requests.iter().enumerate().skip(1) {
        let body = request.json();
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .cloned()
            .unwrap_or_default();
        assert_eq!(last["role"], "user", "request {i}: {last}");
        let answered = last["content"].as_array().is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b["type"] == "tool_result" && b["tool_use_id"] == format!("toolu_{i}"))
        });
        assert!(answered, "request {i}: {last}");
    }
}
