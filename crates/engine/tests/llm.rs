//! Provider clients against scripted servers on 127.0.0.1 (no other network).

use std::time::{Duration, Instant};

use agentd_engine::config::{ConfigRequest, Provider, ResolvedConfig, resolve};
use agentd_engine::llm::{ClientOptions, LlmClient, LlmError, client_with_options};
use agentd_engine::messages::{
    Conversation, Message, Role, ToolCall, ToolResult, ToolSpec, ToolSpecs,
};
use agentd_engine::testing::{self, ScriptedResponse, ScriptedServer, TEST_API_KEY};
use serde_json::{Value, json};

fn fast() -> ClientOptions {
    ClientOptions {
        retry_base_delay: Duration::from_millis(10),
        ..ClientOptions::default()
    }
}

fn client(cfg: &ResolvedConfig) -> std::sync::Arc<dyn LlmClient> {
    client_with_options(cfg, &fast()).expect("client")
}

fn bash_tool() -> ToolSpec {
    ToolSpec {
        name: "bash".into(),
        description: "Run a command".into(),
        parameters: json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}),
    }
}

/// user → assistant calling two tools → both results → user follow-up.
fn history_with_results() -> Vec<Message> {
    let call = |id: &str, cmd: &str| ToolCall {
        call_id: id.into(),
        name: "bash".into(),
        arguments: json!({"command": cmd}),
        raw_arguments: None,
    };
    let result = |id: &str, ok: bool, text: &str| {
        Message::tool(ToolResult {
            call_id: id.into(),
            name: "bash".into(),
            success: ok,
            result: text.into(),
            error: (!ok).then(|| "exit status 1".into()),
        })
    };
    vec![
        Message::system("You are a coder."),
        Message::user("List files"),
        Message {
            role: Role::Assistant,
            content: "Looking.".into(),
            tool_calls: vec![call("call_1", "ls"), call("call_2", "false")],
            tool_result: None,
        },
        result("call_1", true, "a.txt\nb.txt"),
        result("call_2", false, ""),
        Message::user("Go on"),
    ]
}

#[tokio::test]
async fn openai_text_and_tool_call_round_trip() {
    let server = ScriptedServer::start(vec![
        ScriptedResponse::ok(testing::openai::response(
            Some("Let me look."),
            &[("call_9", "bash", r#"{"command":"ls -la"}"#)],
        )),
        ScriptedResponse::ok(testing::openai::text("Done.")),
    ])
    .await
    .expect("server");
    let llm = client(&server.config(Provider::OpenAi));

    let first = llm
        .chat(&[Message::user("hi")], &[bash_tool()], None)
        .await
        .expect("chat");
    assert_eq!(first.content, "Let me look.");
    assert_eq!(first.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(first.model, "scripted-model");
    assert_eq!(first.tool_calls.len(), 1);
    assert_eq!(first.tool_calls[0].call_id, "call_9");
    assert_eq!(first.tool_calls[0].arguments, json!({"command": "ls -la"}));
    let u = first.usage;
    assert_eq!(
        (
            u.input_tokens,
            u.output_tokens,
            u.cache_read_input_tokens,
            u.reasoning_tokens
        ),
        (100, 20, 40, 5)
    );

    let second = llm
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect("chat");
    assert_eq!(
        (second.content.as_str(), second.finish_reason.as_deref()),
        ("Done.", Some("stop"))
    );
    assert!(second.tool_calls.is_empty());

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {TEST_API_KEY}").as_str())
    );
    let body = reqs[0].json();
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "bash");
    assert_eq!(
        body["tools"][0]["function"]["parameters"]["required"],
        json!(["command"])
    );
    assert_eq!(body["parallel_tool_calls"], false);
    // A server other than api.openai.com: the limit goes as `max_tokens`.
    assert_eq!(body["max_tokens"], 4096);
    assert!(body.get("max_completion_tokens").is_none(), "{body}");
    assert!(
        reqs[1].json().get("tools").is_none(),
        "no tools offered, none sent"
    );
}

#[tokio::test]
async fn openai_tool_results_are_role_tool_messages() {
    let server = ScriptedServer::start(vec![ScriptedResponse::ok(testing::openai::text("ok"))])
        .await
        .expect("server");
    let mut cfg = server.config(Provider::OpenRouter);
    cfg.model = "anthropic/claude-sonnet-4".into();
    client(&cfg)
        .chat(&history_with_results(), &[bash_tool()], None)
        .await
        .expect("chat");

    let body = server.requests()[0].json();
    assert_eq!(server.requests()[0].path, "/v1/chat/completions");
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 6);
    assert_eq!(
        messages[0],
        json!({"role": "system", "content": "You are a coder."})
    );
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["content"], "Looking.");
    assert_eq!(
        messages[2]["tool_calls"][0],
        json!({"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}})
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "a.txt\nb.txt"})
    );
    assert_eq!(
        messages[4],
        json!({"role": "tool", "tool_call_id": "call_2", "content": "exit status 1"})
    );
    assert_eq!(messages[5], json!({"role": "user", "content": "Go on"}));
}

#[tokio::test]
async fn unanswered_tool_calls_get_a_failed_result() {
    let server = ScriptedServer::start(vec![ScriptedResponse::ok(testing::openai::text("ok"))])
        .await
        .expect("server");
    let mut history = history_with_results();
    history.remove(4); // drop call_2's result
    client(&server.config(Provider::OpenAi))
        .chat(&history, &[], None)
        .await
        .expect("chat");
    let body = server.requests()[0].json();
    let tool_msgs: Vec<&Value> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_msgs.len(), 2);
    assert_eq!(tool_msgs[1]["tool_call_id"], "call_2");
}

#[tokio::test]
async fn malformed_tool_arguments_do_not_fail_the_call() {
    let server = ScriptedServer::start(vec![ScriptedResponse::ok(testing::openai::tool_call(
        "call_bad",
        "bash",
        r#"{"command": "ls"#,
    ))])
    .await
    .expect("server");
    let resp = client(&server.config(Provider::Doubao))
        .chat(&[Message::user("hi")], &[bash_tool()], None)
        .await
        .expect("chat");
    let call = &resp.tool_calls[0];
    assert_eq!(call.arguments, Value::Null);
    assert_eq!(call.raw_arguments.as_deref(), Some(r#"{"command": "ls"#));
    assert_eq!(call.name, "bash");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = ScriptedServer::start(vec![
        ScriptedResponse::error(429, "slow down").with_header("retry-after", "1"),
        ScriptedResponse::ok(testing::openai::text("finally")),
    ])
    .await
    .expect("server");
    let mut cfg = server.config(Provider::OpenAi);
    cfg.max_retries = 3;
    let started = Instant::now();
    let resp = client(&cfg)
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect("retried");
    assert_eq!(resp.content, "finally");
    assert_eq!(server.requests().len(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_retry_until_the_budget_is_spent() {
    let server = ScriptedServer::start_with_fallback(
        vec![],
        ScriptedResponse::error(500, "upstream exploded"),
    )
    .await
    .expect("server");
    let mut cfg = server.config(Provider::OpenAi);
    cfg.max_retries = 2;
    let err = client(&cfg)
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect_err("fails");
    assert_eq!(server.requests().len(), 3);
    match &err {
        LlmError::Http {
            provider,
            status,
            message,
        } => {
            assert_eq!((provider.as_str(), *status), ("openai", 500));
            assert!(message.contains("upstream exploded"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("openai") && text.contains("500") && text.contains("3 attempts"),
        "{text}"
    );
}

#[tokio::test]
async fn client_errors_are_not_retried_and_never_show_the_key() {
    let server = ScriptedServer::start_with_fallback(
        vec![],
        ScriptedResponse::error(401, &format!("Incorrect API key provided: {TEST_API_KEY}")),
    )
    .await
    .expect("server");
    let mut cfg = server.config(Provider::OpenAi);
    cfg.max_retries = 5;
    let err = client(&cfg)
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect_err("fails");
    assert_eq!(server.requests().len(), 1);
    assert!(matches!(err, LlmError::Http { status: 401, .. }));
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(TEST_API_KEY) && text.contains("[redacted]"),
        "{text}"
    );
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_retried() {
    let server = ScriptedServer::start(vec![
        ScriptedResponse::ok(testing::openai::text("late")).with_delay(Duration::from_secs(5)),
        ScriptedResponse::ok(testing::openai::text("on time")),
    ])
    .await
    .expect("server");
    let mut cfg = server.config(Provider::OpenAi);
    cfg.max_retries = 1;
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(300),
        ..fast()
    };
    let resp = client_with_options(&cfg, &opts)
        .expect("client")
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect("retried");
    assert_eq!(resp.content, "on time");
    assert_eq!(server.requests().len(), 2);

    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    cfg.base_url = Some(format!("http://127.0.0.1:{port}/v1"));
    let err = client(&cfg)
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect_err("refused");
    assert!(matches!(err, LlmError::Transport { .. }), "{err:?}");
    assert!(err.to_string().contains("2 attempts"), "{err}");
}

#[tokio::test]
async fn azure_uses_deployment_url_api_version_and_api_key_header() {
    let server = ScriptedServer::start(vec![ScriptedResponse::ok(testing::openai::text("hi"))])
        .await
        .expect("server");
    let mut cfg = server.config(Provider::Azure);
    cfg.model = "my-gpt4o".into();
    cfg.api_version = Some("2024-06-01".into());
    client(&cfg)
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect("chat");
    let req = &server.requests()[0];
    assert_eq!(
        req.path,
        "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-06-01"
    );
    assert_eq!(req.header("api-key"), Some(TEST_API_KEY));
    assert_eq!(req.header("authorization"), None);
    assert!(req.json()["max_tokens"].is_u64());
}

#[tokio::test]
async fn ollama_needs_no_key_and_honours_base_url() {
    let server = ScriptedServer::start(vec![ScriptedResponse::ok(testing::openai::text("local"))])
        .await
        .expect("server");
    let mut cfg = server.config(Provider::Ollama);
    cfg.api_key = None;
    cfg.base_url = Some(server.url().to_string()); // bare server URL: /v1 is added
    let resp = client(&cfg)
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect("chat");
    assert_eq!(resp.content, "local");
    let req = &server.requests()[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.header("authorization"), None);
}

#[tokio::test]
async fn anthropic_round_trip_and_tool_results() {
    let server = ScriptedServer::start(vec![
        ScriptedResponse::json(529, &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        ScriptedResponse::ok(testing::anthropic::response(
            Some("Checking."),
            &[("toolu_1", "bash", json!({"command": "pwd"}))],
        )),
    ])
    .await
    .expect("server");
    let mut cfg = server.config(Provider::Anthropic);
    cfg.max_retries = 1;
    let resp = client(&cfg)
        .chat(&history_with_results(), &[bash_tool()], None)
        .await
        .expect("chat");
    assert_eq!(resp.content, "Checking.");
    assert_eq!(resp.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(resp.tool_calls[0].call_id, "toolu_1");
    assert_eq!(resp.tool_calls[0].arguments, json!({"command": "pwd"}));
    let u = resp.usage;
    assert_eq!(
        (
            u.input_tokens,
            u.output_tokens,
            u.cache_creation_input_tokens,
            u.cache_read_input_tokens
        ),
        (100, 20, 10, 30)
    );

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "529 is retried");
    let req = &reqs[1];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("x-api-key"), Some(TEST_API_KEY));
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    let body = req.json();
    assert_eq!(body["system"], "You are a coder.");
    assert_eq!(body["tools"][0]["name"], "bash");
    assert_eq!(
        body["tools"][0]["input_schema"]["required"],
        json!(["command"])
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 3, "{messages:#?}");
    assert_eq!(
        messages[0],
        json!({"role": "user", "content": [{"type": "text", "text": "List files"}]})
    );
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(
        messages[1]["content"][1],
        json!({"type": "tool_use", "id": "call_1", "name": "bash", "input": {"command": "ls"}})
    );
    // Both results and the follow-up text share one user turn.
    assert_eq!(
        messages[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt\nb.txt", "is_error": false},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "exit status 1", "is_error": true},
            {"type": "text", "text": "Go on"}
        ]})
    );
}

#[tokio::test]
async fn gemini_round_trip_and_function_responses() {
    let server = ScriptedServer::start(vec![ScriptedResponse::ok(testing::gemini::response(
        Some("Sure."),
        &[("bash", json!({"command": "ls"}))],
    ))])
    .await
    .expect("server");
    let cfg = server.config(Provider::Google);
    let resp = client(&cfg)
        .chat(&history_with_results(), &[bash_tool()], None)
        .await
        .expect("chat");
    assert_eq!(resp.content, "Sure.");
    assert_eq!(resp.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(resp.tool_calls[0].name, "bash");
    assert_eq!(resp.tool_calls[0].arguments, json!({"command": "ls"}));
    assert!(!resp.tool_calls[0].call_id.is_empty());
    let u = resp.usage;
    assert_eq!(
        (
            u.input_tokens,
            u.output_tokens,
            u.cache_read_input_tokens,
            u.reasoning_tokens
        ),
        (100, 28, 30, 8)
    );

    let req = &server.requests()[0];
    assert_eq!(req.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(req.header("x-goog-api-key"), Some(TEST_API_KEY));
    let body = req.json();
    assert_eq!(
        body["systemInstruction"],
        json!({"parts": [{"text": "You are a coder."}]})
    );
    assert_eq!(body["tools"][0]["functionDeclarations"][0]["name"], "bash");
    let contents = body["contents"].as_array().expect("contents");
    assert_eq!(contents.len(), 3);
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(contents[1]["parts"][1]["functionCall"]["name"], "bash");
    assert_eq!(contents[2]["role"], "user");
    assert_eq!(
        contents[2]["parts"][0]["functionResponse"],
        json!({"id": "call_1", "name": "bash", "response": {"output": "a.txt\nb.txt"}})
    );
    assert_eq!(
        contents[2]["parts"][1]["functionResponse"]["response"],
        json!({"error": "exit status 1"})
    );
    assert_eq!(contents[2]["parts"][2], json!({"text": "Go on"}));
}

#[tokio::test]
async fn gemini_call_ids_it_did_not_send_are_not_echoed() {
    let server = ScriptedServer::start(vec![
        ScriptedResponse::ok(testing::gemini::function_call(
            "bash",
            json!({"command": "ls"}),
        )),
        ScriptedResponse::ok(testing::gemini::text("done")),
    ])
    .await
    .expect("server");
    let llm = client(&server.config(Provider::Google));
    let mut history = vec![Message::user("go")];
    let first = llm
        .chat(&history, &[bash_tool()], None)
        .await
        .expect("chat");
    let call = first.tool_calls[0].clone();
    history.push(Message {
        role: Role::Assistant,
        content: String::new(),
        tool_calls: vec![call.clone()],
        tool_result: None,
    });
    history.push(Message::tool(ToolResult {
        call_id: call.call_id,
        name: "bash".into(),
        success: true,
        result: "a.txt".into(),
        error: None,
    }));
    llm.chat(&history, &[bash_tool()], None)
        .await
        .expect("chat");
    let contents = server.requests()[1].json()["contents"].clone();
    assert_eq!(
        contents[1]["parts"][0],
        json!({"functionCall": {"name": "bash", "args": {"command": "ls"}}})
    );
    assert_eq!(
        contents[2]["parts"][0],
        json!({"functionResponse": {"name": "bash", "response": {"output": "a.txt"}}})
    );
}

#[tokio::test]
async fn scripted_llm_records_calls() {
    use agentd_engine::testing::ScriptedLlm;
    let llm = ScriptedLlm::new(vec![Ok(ScriptedLlm::tool_calls(&[(
        "c1",
        "task_done",
        json!({}),
    )]))]);
    let resp = llm
        .chat(&[Message::user("x")], &[bash_tool()], None)
        .await
        .expect("scripted");
    assert_eq!(resp.tool_calls[0].name, "task_done");
    assert!(llm.chat(&[], &[], None).await.is_err(), "script exhausted");
    assert_eq!(llm.calls()[0].1, ["bash"]);
}

#[tokio::test]
async fn openai_compatible_servers_get_max_tokens_unless_the_model_opts_in() {
    let server = ScriptedServer::start_with_fallback(
        vec![],
        ScriptedResponse::ok(testing::openai::text("ok")),
    )
    .await
    .expect("server");
    // `provider: openai` pointed at a local server (llama.cpp, vLLM, …).
    let mut cfg = server.config(Provider::OpenAi);
    cfg.max_tokens = 1234;
    client(&cfg)
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect("chat");
    cfg.max_completion_tokens = Some(777);
    client(&cfg)
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect("chat");
    let reqs = server.requests();
    let (plain, opted_in) = (reqs[0].json(), reqs[1].json());
    assert_eq!(plain["max_tokens"], 1234, "{plain}");
    assert!(plain.get("max_completion_tokens").is_none(), "{plain}");
    assert_eq!(opted_in["max_completion_tokens"], 777, "{opted_in}");
    assert!(opted_in.get("max_tokens").is_none(), "{opted_in}");
}

/// Accepts every request and never answers.
async fn silent_server() -> ScriptedServer {
    let never = ScriptedResponse::ok(testing::openai::text("too late"))
        .with_delay(Duration::from_secs(3600));
    ScriptedServer::start_with_fallback(vec![], never)
        .await
        .expect("server")
}

#[tokio::test]
async fn a_models_timeout_from_the_config_file_limits_the_call() {
    let server = silent_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trae_config.yaml");
    let yaml = format!(
        "agents:\n  trae_agent:\n    model: local\n\
         model_providers:\n  llama:\n    provider: openai\n    api_key: {TEST_API_KEY}\n    base_url: {}/v1\n\
         models:\n  local:\n    model_provider: llama\n    model: qwen3\n    max_retries: 0\n    timeout: 1\n",
        server.url()
    );
    std::fs::write(&path, yaml).expect("write config");
    let req = ConfigRequest {
        config_file: Some(path.display().to_string()),
        ..ConfigRequest::default()
    };
    let cfg = resolve(&req, &|_: &str| None).expect("config");
    assert_eq!(cfg.request_timeout_secs, Some(1.0));

    let started = Instant::now();
    let (llm, history) = (client(&cfg), [Message::user("hi")]);
    let call = llm.chat(&history, &[], None);
    // A regression must fail the test, not hang it for 600 s.
    let err = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the model's timeout applies")
        .expect_err("times out");
    let waited = started.elapsed();
    assert!(matches!(err, LlmError::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().contains("request timed out after 1.0 s"),
        "{err}"
    );
    // Not the server-wide 600 s (loose: no tight wall-clock claims).
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_deadline_bounds_the_call_with_its_retries() {
    let server = silent_server().await;
    let mut cfg = server.config(Provider::OpenAi);
    cfg.max_retries = 10;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let (llm, history) = (client(&cfg), [Message::user("hi")]);
    let call = llm.chat(&history, &[], Some(deadline));
    let err = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the deadline applies")
        .expect_err("out of time");
    let waited = started.elapsed();
    assert!(matches!(err, LlmError::OutOfTime { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "openai model call given up: the time left for the step/task ran out after waiting "
        ),
        "{text}"
    );
    assert!(text.contains("request timed out"), "{text}");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

#[tokio::test]
async fn no_backoff_is_slept_past_the_deadline() {
    let server = ScriptedServer::start_with_fallback(
        vec![],
        ScriptedResponse::error(503, "overloaded").with_header("retry-after", "2"),
    )
    .await
    .expect("server");
    let mut cfg = server.config(Provider::OpenAi);
    cfg.max_retries = 10;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let err = client(&cfg)
        .chat(&[Message::user("hi")], &[], Some(deadline))
        .await
        .expect_err("out of time");
    let waited = started.elapsed();
    assert!(matches!(err, LlmError::OutOfTime { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("(1 attempt; last error: openai answered HTTP 503: overloaded)"),
        "{err}"
    );
    // The 2 s Retry-After would end past the deadline: given up at once.
    assert_eq!(server.requests().len(), 1);
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

#[tokio::test]
async fn a_call_that_gave_up_reports_its_first_error_too() {
    let server = ScriptedServer::start_with_fallback(
        vec![ScriptedResponse::error(503, "overloaded")],
        ScriptedResponse::error(500, "upstream exploded"),
    )
    .await
    .expect("server");
    let mut cfg = server.config(Provider::OpenAi);
    cfg.max_retries = 2;
    let err = client(&cfg)
        .chat(&[Message::user("hi")], &[], None)
        .await
        .expect_err("fails");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "openai answered HTTP 500: upstream exploded (gave up after 3 attempts in "
        ),
        "{text}"
    );
    assert!(
        text.ends_with("; first error: openai answered HTTP 503: overloaded)"),
        "{text}"
    );
}

/// Streams: each provider's streamed answer (text and tool-call arguments
/// in pieces) comes out as the same turn as the non-streamed answer, with
/// its text handed out as it arrives.
#[tokio::test]
async fn streamed_answers_equal_the_non_streamed_ones() {
    let text = "Let me look at the files first.";
    let openai_calls = [
        ("call_a", "bash", r#"{"command": "ls -la /tmp"}"#),
        ("call_b", "task_done", "{}"),
    ];
    let anthropic_calls = [("toolu_1", "bash", json!({"command": "ls -la /tmp"}))];
    let gemini_calls = [("bash", json!({"command": "ls -la /tmp"}))];
    let cases = [
        (
            Provider::OpenAi,
            ScriptedResponse::ok(testing::openai::response(Some(text), &openai_calls)),
            testing::openai::stream(Some(text), &openai_calls),
        ),
        (
            Provider::Anthropic,
            ScriptedResponse::ok(testing::anthropic::response(Some(text), &anthropic_calls)),
            testing::anthropic::stream(Some(text), &anthropic_calls),
        ),
        (
            Provider::Google,
            ScriptedResponse::ok(testing::gemini::response(Some(text), &gemini_calls)),
            testing::gemini::stream(Some(text), &gemini_calls),
        ),
    ];
    for (provider, plain, streamed) in cases {
        let server = ScriptedServer::start(vec![plain, streamed]).await.unwrap();
        let llm = client(&server.config(provider));
        let history = [Message::user("List files")];
        let unstreamed = llm.chat(&history, &[bash_tool()], None).await.unwrap();
        let seen = std::sync::Mutex::new(Vec::<String>::new());
        let sink = |t: &str| seen.lock().unwrap().push(t.to_string());
        let mut streamed = llm
            .chat_streamed(
                &Conversation::new(history.to_vec()),
                &ToolSpecs::new(vec![bash_tool()]),
                None,
                &sink,
            )
            .await
            .unwrap();
        if provider == Provider::Google {
            // Gemini sends no call ids: agentd numbers them.
            for (a, b) in streamed.tool_calls.iter_mut().zip(&unstreamed.tool_calls) {
                a.call_id = b.call_id.clone();
            }
        }
        assert_eq!(streamed, unstreamed, "{provider:?}");
        assert_eq!(seen.lock().unwrap().concat(), text, "{provider:?}");
        assert!(
            seen.lock().unwrap().len() > 3,
            "{provider:?}: the text came in pieces"
        );
        let requests = server.requests();
        assert!(requests[0].json().get("stream").is_none(), "{provider:?}");
        match provider {
            Provider::OpenAi => {
                assert_eq!(requests[1].json()["stream"], true);
                assert_eq!(
                    requests[1].json()["stream_options"],
                    json!({"include_usage": true})
                );
            }
            Provider::Anthropic => assert_eq!(requests[1].json()["stream"], true),
            _ => {
                assert!(
                    requests[0].path.ends_with(":generateContent"),
                    "{}",
                    requests[0].path
                );
                assert!(
                    requests[1].path.ends_with(":streamGenerateContent?alt=sse"),
                    "{}",
                    requests[1].path
                );
            }
        }
    }
}

#[tokio::test]
async fn streaming_can_be_turned_off_and_servers_that_ignore_it_still_work() {
    // A server that answers a streamed request with plain JSON.
    let server = ScriptedServer::start(vec![ScriptedResponse::ok(testing::openai::text("plain"))])
        .await
        .unwrap();
    let llm = client(&server.config(Provider::OpenAi));
    let seen = std::sync::Mutex::new(String::new());
    let sink = |t: &str| seen.lock().unwrap().push_str(t);
    let answer = llm
        .chat_streamed(
            &vec![Message::user("hi")].into(),
            &ToolSpecs::default(),
            None,
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(answer.content, "plain");
    assert_eq!(server.requests()[0].json()["stream"], true);

    // `stream: false` in the model's config: never asked to stream.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trae_config.yaml");
    std::fs::write(
        &path,
        format!(
            "agents:\n  trae_agent:\n    model: m\nmodel_providers:\n  o:\n    provider: openai\n    api_key: k\n    \
             base_url: {}/v1\nmodels:\n  m:\n    model_provider: o\n    model: gpt-4o\n    stream: false\n",
            server.url()
        ),
    )
    .unwrap();
    let cfg = resolve(
        &ConfigRequest {
            config_file: Some(path.display().to_string()),
            ..ConfigRequest::default()
        },
        &|_| None,
    )
    .unwrap();
    assert!(!cfg.stream);
    server.push(ScriptedResponse::ok(testing::openai::text("plain again")));
    let answer = client(&cfg)
        .chat_streamed(
            &vec![Message::user("hi")].into(),
            &ToolSpecs::default(),
            None,
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(answer.content, "plain again");
    assert!(server.requests()[1].json().get("stream").is_none());
    assert_eq!(*seen.lock().unwrap(), "");
}

#[tokio::test]
async fn an_error_inside_a_stream_fails_the_call() {
    let server = ScriptedServer::start(vec![ScriptedResponse::sse(&[
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
                   "model": "x", "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ),
        (
            Some("error"),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
    ])])
    .await
    .unwrap();
    let llm = client(&server.config(Provider::Anthropic));
    let err = llm
        .chat_streamed(
            &vec![Message::user("hi")].into(),
            &ToolSpecs::default(),
            None,
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the stream reported an error: Overloaded"),
        "{err}"
    );
    // Not retried once the stream had begun.
    assert_eq!(server.requests().len(), 1);
}
