//! Prometheus metrics, served at `GET /metrics` on agentd's own port (text
//! exposition format). One [`Metrics`] lives for the process; the layers that
//! observe something hold an `Arc` of it.
//!
//! Hot paths touch only pre-resolved handles: label values are `&'static str`
//! (RPC methods, tools, statuses) or resolved once per run (provider/model),
//! so an observation is an atomic add after a read-locked map lookup at most.

use std::{
    fmt::Write as _,
    sync::{Arc, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// An RPC (gRPC method path, e.g. `/agentd.trae.v1.TraeService/Run`, or a
/// plain HTTP route such as `/ap/v1/agent/logs/ws`) and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: RpcCode,
}

/// A gRPC status code (printed by its canonical name, `OK`, `NOT_FOUND`, …)
/// or, for plain HTTP routes, the HTTP status (`200`, `101`, `404`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcCode {
    Grpc(i32),
    Http(u16),
}

impl RpcCode {
    /// The canonical name of a gRPC code (`google.rpc.Code`).
    pub fn grpc_name(code: i32) -> &'static str {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        usize::try_from(code)
            .ok()
            .and_then(|i| NAMES.get(i).copied())
            .unwrap_or("UNKNOWN")
    }
}

impl EncodeLabelValue for RpcCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            RpcCode::Grpc(code) => encoder.write_str(Self::grpc_name(*code)),
            RpcCode::Http(status) => write!(encoder, "{status}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LlmLabels {
    pub provider: Arc<str>,
    pub model: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TokenLabels {
    pub provider: Arc<str>,
    pub model: Arc<str>,
    /// `input` or `output`.
    pub token_type: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: &'static str,
}

/// An audited change: which key did what (`create`, `stop`, `delete`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuditLabels {
    pub key: Arc<str>,
    pub action: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub steps: Counter,
    /// A step's wall time outside the model call and its tools: agentd's own
    /// per-step work (history, events, trajectory).
    pub step_overhead: Histogram,
    pub step_llm: Histogram,
    pub step_tools: Histogram,
    /// Events appended to task logs (stored, then delivered).
    pub events_written: Counter,
    /// Readers following task event streams now (SSE, WebSocket, gRPC).
    pub stream_followers: Gauge,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    /// Tasks by status, read from the store at scrape time.
    tasks: Family<StatusLabels, Gauge>,
    tasks_running: Gauge,
    tasks_queued: Gauge,
    task_slots: Gauge,
    llm_requests: Family<LlmLabels, Counter>,
    llm_errors: Family<LlmLabels, Counter>,
    llm_tokens: Family<TokenLabels, Counter>,
    llm_cost: Family<LlmLabels, Counter<f64, AtomicU64>>,
    tool_duration: HistogramFamily<ToolLabels>,
    audit: Family<AuditLabels, Counter>,
}

/// One run's LLM metrics, resolved once for its provider/model.
#[derive(Clone)]
pub struct LlmObserver {
    pub requests: Counter,
    pub errors: Counter,
    pub input_tokens: Counter,
    pub output_tokens: Counter,
    pub cost_usd: Counter<f64, AtomicU64>,
}

/// The runner's load at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunLoad {
    /// Runs (background runs and Agent Protocol steps) holding a slot now.
    pub running: usize,
    /// Steps waiting for the previous step of the same task to end.
    pub queued: usize,
    /// The limit of runs at once (`--max-running-tasks`).
    pub slots: usize,
}

/// 100 µs .. ~52 s: RPCs; longer streams land in +Inf.
fn rpc_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// 1 ms .. ~8.7 min: tool calls (bash commands may take their 120 s).
fn tool_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("agentd");
        let steps = Counter::default();
        registry.register("steps", "Agent steps finished", steps.clone());
        // 10 µs .. ~5 s: overheads sit at the low end, model calls higher up.
        let seconds = || Histogram::new(exponential_buckets(0.00001, 2.0, 20));
        let step_overhead = seconds();
        registry.register(
            "step_overhead_seconds",
            "Wall time of a step outside the model call and tool calls",
            step_overhead.clone(),
        );
        let step_llm = seconds();
        registry.register(
            "step_llm_seconds",
            "Wall time of a step's model call",
            step_llm.clone(),
        );
        let step_tools = seconds();
        registry.register(
            "step_tools_seconds",
            "Wall time of a step's tool calls",
            step_tools.clone(),
        );
        let events_written = Counter::default();
        registry.register(
            "events_written",
            "Events appended to task logs",
            events_written.clone(),
        );
        let stream_followers = Gauge::default();
        registry.register(
            "stream_followers",
            "Readers following task event streams",
            stream_followers.clone(),
        );
        let rpc_requests = Family::default();
        registry.register(
            "rpc_requests",
            "Requests by gRPC method (or HTTP route) and status code",
            rpc_requests.clone(),
        );
        let rpc_duration = HistogramFamily::new_with_constructor(rpc_seconds as fn() -> Histogram);
        registry.register(
            "rpc_duration_seconds",
            "Requests' wall time until the response (stream) ended, by method and code",
            rpc_duration.clone(),
        );
        let tasks = Family::default();
        registry.register("tasks", "Tasks by status", tasks.clone());
        let tasks_running = Gauge::default();
        registry.register(
            "tasks_running",
            "Runs (background runs and Agent Protocol steps) executing now",
            tasks_running.clone(),
        );
        let tasks_queued = Gauge::default();
        registry.register(
            "tasks_queued",
            "Steps waiting for the previous step of their task",
            tasks_queued.clone(),
        );
        let task_slots = Gauge::default();
        registry.register(
            "task_slots",
            "Runs allowed at once (--max-running-tasks)",
            task_slots.clone(),
        );
        let llm_requests = Family::default();
        registry.register(
            "llm_requests",
            "LLM calls (after retries) by provider and model",
            llm_requests.clone(),
        );
        let llm_errors = Family::default();
        registry.register(
            "llm_errors",
            "LLM calls that failed after their retries, by provider and model",
            llm_errors.clone(),
        );
        let llm_tokens = Family::default();
        registry.register(
            "llm_tokens",
            "Tokens used by provider, model and type (input/output)",
            llm_tokens.clone(),
        );
        let llm_cost = Family::default();
        registry.register(
            "llm_cost_usd",
            "Estimated cost of LLM calls in USD, by provider and model",
            llm_cost.clone(),
        );
        let tool_duration =
            HistogramFamily::new_with_constructor(tool_seconds as fn() -> Histogram);
        registry.register(
            "tool_call_seconds",
            "Tool calls' wall time by tool",
            tool_duration.clone(),
        );
        let audit = Family::<AuditLabels, Counter>::default();
        registry.register(
            "audit_actions",
            "Tasks created, stopped and deleted, by API key name and action",
            audit.clone(),
        );
        Arc::new(Self {
            registry,
            steps,
            step_overhead,
            step_llm,
            step_tools,
            events_written,
            stream_followers,
            rpc_requests,
            rpc_duration,
            tasks,
            tasks_running,
            tasks_queued,
            task_slots,
            llm_requests,
            llm_errors,
            llm_tokens,
            llm_cost,
            tool_duration,
            audit,
        })
    }

    /// One audited change by the key named `key`.
    pub fn audit(&self, key: &str, action: &'static str) {
        self.audit
            .get_or_create(&AuditLabels {
                key: key.into(),
                action,
            })
            .inc();
    }

    /// One finished request.
    pub fn observe_rpc(&self, labels: RpcLabels, seconds: f64) {
        self.rpc_requests.get_or_create(&labels).inc();
        self.rpc_duration.get_or_create(&labels).observe(seconds);
    }

    /// The handles a run's LLM calls are counted with.
    pub fn llm(&self, provider: &str, model: &str) -> LlmObserver {
        let labels = LlmLabels {
            provider: provider.into(),
            model: model.into(),
        };
        let tokens = |token_type| TokenLabels {
            provider: labels.provider.clone(),
            model: labels.model.clone(),
            token_type,
        };
        LlmObserver {
            requests: self.llm_requests.get_or_create_owned(&labels),
            errors: self.llm_errors.get_or_create_owned(&labels),
            input_tokens: self.llm_tokens.get_or_create_owned(&tokens("input")),
            output_tokens: self.llm_tokens.get_or_create_owned(&tokens("output")),
            cost_usd: self.llm_cost.get_or_create_owned(&labels),
        }
    }

    /// One tool call's wall time; `tool` is a built-in tool's name or `other`.
    pub fn observe_tool(&self, tool: &'static str, seconds: f64) {
        self.tool_duration
            .get_or_create(&ToolLabels { tool })
            .observe(seconds);
    }

    /// What is read at scrape time: tasks by status (the status's label
    /// value and its count; a status left out keeps its last value) and the
    /// runner's load.
    pub fn set_task_state(
        &self,
        by_status: impl IntoIterator<Item = (&'static str, i64)>,
        load: RunLoad,
    ) {
        for (status, n) in by_status {
            self.tasks.get_or_create(&StatusLabels { status }).set(n);
        }
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.tasks_running.set(gauge(load.running));
        self.tasks_queued.set(gauge(load.queued));
        self.task_slots.set(gauge(load.slots));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_metrics_render_with_their_labels() {
        let m = Metrics::new();
        let run = RpcLabels {
            method: "/agentd.trae.v1.TraeService/Run",
            code: RpcCode::Grpc(5),
        };
        m.observe_rpc(run, 0.002);
        m.observe_rpc(run, 0.004);
        m.observe_rpc(
            RpcLabels {
                method: "/metrics",
                code: RpcCode::Http(200),
            },
            0.001,
        );
        let llm = m.llm("openai", "gpt-4o");
        llm.requests.inc();
        llm.input_tokens.inc_by(120);
        llm.output_tokens.inc_by(7);
        llm.cost_usd.inc_by(0.5);
        m.observe_tool("bash", 0.25);
        m.set_task_state(
            [("completed", 3), ("failed", 0)],
            RunLoad {
                running: 1,
                queued: 0,
                slots: 5,
            },
        );
        let text = m.render();
        for line in [
            r#"agentd_rpc_requests_total{method="/agentd.trae.v1.TraeService/Run",code="NOT_FOUND"} 2"#,
            r#"agentd_rpc_requests_total{method="/metrics",code="200"} 1"#,
            r#"agentd_rpc_duration_seconds_count{method="/agentd.trae.v1.TraeService/Run",code="NOT_FOUND"} 2"#,
            r#"agentd_llm_requests_total{provider="openai",model="gpt-4o"} 1"#,
            r#"agentd_llm_tokens_total{provider="openai",model="gpt-4o",token_type="input"} 120"#,
            r#"agentd_llm_tokens_total{provider="openai",model="gpt-4o",token_type="output"} 7"#,
            r#"agentd_llm_cost_usd_total{provider="openai",model="gpt-4o"} 0.5"#,
            r#"agentd_tool_call_seconds_count{tool="bash"} 1"#,
            r#"agentd_tasks{status="completed"} 3"#,
            r#"agentd_tasks{status="failed"} 0"#,
            "agentd_tasks_running 1",
            "agentd_task_slots 5",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // The same provider/model resolves to the same series.
        m.llm("openai", "gpt-4o").requests.inc();
        assert!(
            m.render()
                .contains(r#"agentd_llm_requests_total{provider="openai",model="gpt-4o"} 2"#)
        );
    }

    #[test]
    fn grpc_codes_have_their_canonical_names() {
        assert_eq!(RpcCode::grpc_name(0), "OK");
        assert_eq!(RpcCode::grpc_name(16), "UNAUTHENTICATED");
        assert_eq!(RpcCode::grpc_name(99), "UNKNOWN");
        assert_eq!(RpcCode::grpc_name(-1), "UNKNOWN");
    }
}
