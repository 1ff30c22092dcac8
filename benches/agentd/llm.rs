//! An OpenAI-compatible chat server that answers at once: a no-op tool call
//! (`sequentialthinking`) until a task has taken its steps, then
//! `task_done`. agentd reaches it through an ordinary `base_url`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use serde_json::{Value, json};
use tokio::sync::watch;

pub struct InstantLlm {
    pub base_url: String,
    gate: watch::Sender<bool>,
    pub requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Script {
    steps: usize,
    calls: usize,
    delay: Duration,
    gate: watch::Receiver<bool>,
    requests: Arc<AtomicU64>,
}

impl InstantLlm {
    /// `steps`: tool-calling turns per task before `task_done`; `delay`: a
    /// pause before each answer (paces a run); `open`: answer at once, or
    /// hold every request until [`InstantLlm::open`].
    pub async fn start(steps: usize, delay: Duration, open: bool) -> Self {
        Self::start_with_calls(steps, 1, delay, open).await
    }

    /// As [`InstantLlm::start`], with `calls` no-op tool calls per answer.
    pub async fn start_with_calls(steps: usize, calls: usize, delay: Duration, open: bool) -> Self {
        let (gate, gate_rx) = watch::channel(open);
        let requests = Arc::new(AtomicU64::new(0));
        let script = Script {
            steps,
            calls,
            delay,
            gate: gate_rx,
            requests: requests.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(script);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the LLM server");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            gate,
            requests,
            task,
        }
    }

    pub fn open(&self) {
        let _ = self.gate.send(true);
    }

    /// A Trae config (YAML) using this server.
    pub fn trae_config(&self, max_steps: usize) -> String {
        format!(
            "agents:\n  trae_agent:\n    model: bench\n    max_steps: {max_steps}\n    enable_lakeview: false\n\
                 model_providers:\n  openai:\n    provider: openai\n    api_key: bench-key\n    base_url: {}\n\
                 models:\n  bench:\n    model_provider: openai\n    model: instant\n    max_tokens: 256\n    temperature: 0\n    top_p: 1\n    max_retries: 0\n",
            self.base_url
        )
    }
}

impl Drop for InstantLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(s): State<Script>, body: Bytes) -> axum::Json<Value> {
    s.requests.fetch_add(1, Ordering::Relaxed);
    let mut gate = s.gate.clone();
    let _ = gate.wait_for(|open| *open).await;
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    // Turns so far = assistant messages in the history (no JSON parse: this
    // server must not be the bottleneck).
    let taken = memchr_count(&body, br#""role":"assistant""#);
    let calls: Vec<Value> = if taken >= s.steps {
        vec![json!({"id": format!("call_{taken}"), "type": "function",
                    "function": {"name": "task_done", "arguments": "{}"}})]
    } else {
        (0..s.calls)
            .map(|i| {
                let args = json!({"thought": "noted", "next_thought_needed": true,
                                  "thought_number": taken + 1, "total_thoughts": s.steps});
                json!({"id": format!("call_{taken}_{i}"), "type": "function",
                       "function": {"name": "sequentialthinking", "arguments": args.to_string()}})
            })
            .collect()
    };
    axum::Json(json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "instant",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": "", "tool_calls": calls}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
}

fn memchr_count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}
