//! The tools a model may call. Each runs in the task's working directory.
//!
//! Seam used by the agent loop: build a [`ToolSet`] from the configured tool
//! names, offer `specs()` to the model, `call()` each tool call, and
//! `shutdown()` when the run ends (kills every process the tools started).

mod args;
mod bash;
mod ckg;
mod clip;
mod edit;
mod json_edit;
mod json_path;
pub mod mcp;
mod process_group;
mod sandbox;
mod task_done;
mod thinking;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tracing::Instrument as _;

use crate::messages::{ToolCall, ToolResult, ToolSpec, ToolSpecs};

pub use clip::MAX_RESPONSE_CHARS;
pub use process_group::{
    GroupCleanup, ProcessGroup, ProcessObserver, end_recorded_group, join_cgroups_on_spawn,
    process_is_alive, process_start_time,
};
pub use sandbox::BashSandbox;
pub use task_done::NAME as TASK_DONE;

/// Every built-in tool, in the order they are listed to clients and models.
pub const BUILTIN_TOOL_NAMES: [&str; 6] = [
    bash::NAME,
    edit::NAME,
    thinking::NAME,
    task_done::NAME,
    json_edit::NAME,
    ckg::NAME,
];

/// Specs of all built-in tools in [`BUILTIN_TOOL_NAMES`] order (what
/// `/api/tools` lists).
pub fn builtin_tool_specs() -> Vec<ToolSpec> {
    vec![
        bash::spec(),
        edit::spec(),
        thinking::spec(),
        task_done::spec(),
        json_edit::spec(),
        ckg::spec(),
    ]
}

/// The spec of one built-in tool.
pub fn builtin_tool_spec(name: &str) -> Option<ToolSpec> {
    builtin_tool_specs().into_iter().find(|s| s.name == name)
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ToolSetError {
    #[error("unknown tool `{name}`; the built-in tools are: {}", BUILTIN_TOOL_NAMES.join(", "))]
    UnknownTool { name: String },
    #[error("working directory {0} must be an absolute path to an existing directory")]
    BadWorkingDir(PathBuf),
}

/// Limits of the tools; the defaults are Trae's.
#[derive(Debug, Clone)]
pub struct ToolSetOptions {
    /// How long one bash command may run before the session must be restarted.
    pub bash_timeout: Duration,
    /// Between SIGTERM and SIGKILL when ending a process group.
    pub kill_grace: Duration,
    /// Told of every process group the tools start and end (the service
    /// records them to end what a crash leaves behind).
    pub process_observer: Option<Arc<dyn ProcessObserver>>,
    /// Run `bash` under bubblewrap; `None`: directly.
    pub sandbox: Option<BashSandbox>,
    /// Start and call limits of MCP servers.
    pub mcp: mcp::McpOptions,
}

impl Default for ToolSetOptions {
    fn default() -> Self {
        Self {
            bash_timeout: Duration::from_secs(120),
            kill_grace: Duration::from_secs(2),
            process_observer: None,
            sandbox: None,
            mcp: mcp::McpOptions::default(),
        }
    }
}

/// What a tool produced: text for the model and, when it failed, why.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ToolOutput {
    pub(crate) output: String,
    pub(crate) error: Option<String>,
}

impl ToolOutput {
    pub(crate) fn ok(output: impl Into<String>) -> Self {
        Self {
            output: output.into(),
            error: None,
        }
    }
    pub(crate) fn error(error: impl Into<String>) -> Self {
        Self {
            output: String::new(),
            error: Some(error.into()),
        }
    }
    /// Output worth showing together with a failure (a failed command's output).
    pub(crate) fn partial(output: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            output: output.into(),
            error: Some(error.into()),
        }
    }
    /// The same, failed, with `note` before any error it had.
    pub(crate) fn with_error_note(self, note: &str) -> Self {
        let error = match self.error {
            Some(e) => format!("{note} {e}"),
            None => note.to_string(),
        };
        Self {
            output: self.output,
            error: Some(error),
        }
    }
}

/// Runs a tool's file-system work on the blocking pool, so large files do not
/// stall the runtime; its `Err` is the message the model sees.
pub(crate) async fn run_blocking(
    tool: &'static str,
    args: &args::Args,
    work: fn(&args::Args) -> Result<String, String>,
) -> ToolOutput {
    let args = args.clone();
    match tokio::task::spawn_blocking(move || work(&args)).await {
        Ok(Ok(output)) => ToolOutput::ok(output),
        Ok(Err(error)) => ToolOutput::error(error),
        Err(e) => ToolOutput::error(format!("The {tool} tool failed: {e}")),
    }
}

#[async_trait]
pub(crate) trait Tool: Send + Sync {
    fn name(&self) -> &str;
    async fn call(&self, args: &args::Args) -> ToolOutput;
    /// Ends whatever the tool started (processes); the default has nothing to end.
    async fn shutdown(&self) {}
}

/// The tools of one task, bound to its working directory. Dropping it kills
/// any process group the tools started; `shutdown` does so gracefully.
pub struct ToolSet {
    tools: Vec<Box<dyn Tool>>,
    specs: ToolSpecs,
    working_dir: PathBuf,
    options: ToolSetOptions,
    /// The MCP servers whose tools are in `tools` (ended by `shutdown`).
    mcp_servers: Vec<Arc<mcp::McpServer>>,
}

impl std::fmt::Debug for ToolSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolSet")
            .field(
                "tools",
                &self.tools.iter().map(|t| t.name()).collect::<Vec<_>>(),
            )
            .field("working_dir", &self.working_dir)
            .finish()
    }
}

impl ToolSet {
    /// Tools by name (duplicates ignored), with Trae's limits.
    pub fn new<S: AsRef<str>>(
        tool_names: &[S],
        working_dir: impl Into<PathBuf>,
    ) -> Result<Self, ToolSetError> {
        Self::with_options(tool_names, working_dir, ToolSetOptions::default())
    }

    pub fn with_options<S: AsRef<str>>(
        tool_names: &[S],
        working_dir: impl Into<PathBuf>,
        options: ToolSetOptions,
    ) -> Result<Self, ToolSetError> {
        let working_dir = working_dir.into();
        if !working_dir.is_absolute() || !working_dir.is_dir() {
            return Err(ToolSetError::BadWorkingDir(working_dir));
        }
        let mut tools: Vec<Box<dyn Tool>> = Vec::new();
        let mut specs = Vec::new();
        for name in tool_names {
            let name = name.as_ref();
            if specs.iter().any(|s: &ToolSpec| s.name == name) {
                continue;
            }
            let tool: Box<dyn Tool> = match name {
                bash::NAME => Box::new(
                    bash::BashTool::new(
                        working_dir.clone(),
                        options.bash_timeout,
                        options.kill_grace,
                    )
                    .supervised(options.process_observer.clone(), options.sandbox.clone()),
                ),
                edit::NAME => Box::new(edit::EditTool),
                thinking::NAME => Box::new(thinking::ThinkingTool::default()),
                task_done::NAME => Box::new(task_done::TaskDoneTool),
                json_edit::NAME => Box::new(json_edit::JsonEditTool),
                ckg::NAME => Box::new(ckg::CkgTool::new(working_dir.clone())),
                other => {
                    return Err(ToolSetError::UnknownTool {
                        name: other.to_string(),
                    });
                }
            };
            specs.extend(builtin_tool_spec(name));
            tools.push(tool);
        }
        Ok(Self {
            tools,
            specs: ToolSpecs::new(specs),
            working_dir,
            options,
            mcp_servers: Vec::new(),
        })
    }

    /// Starts MCP servers (in the working directory unless they name their
    /// own `cwd`, their processes reported like bash's) and adds their tools
    /// after the built-in ones. Fails, with nothing left running, when one
    /// does not start in time or offers a name already taken.
    pub async fn start_mcp_servers(
        &mut self,
        servers: &[(&str, &crate::config::McpServerConfig)],
    ) -> Result<(), mcp::McpError> {
        if servers.is_empty() {
            return Ok(());
        }
        let taken: Vec<String> = self.specs.iter().map(|s| s.name.clone()).collect();
        let started = mcp::start(
            servers,
            &taken,
            mcp::McpStart {
                working_dir: &self.working_dir,
                observer: self.options.process_observer.clone(),
                options: &self.options.mcp,
                kill_grace: self.options.kill_grace,
            },
        )
        .await?;
        for (tool, spec) in started.tools {
            self.tools.push(Box::new(tool));
            self.specs.push(spec);
        }
        self.mcp_servers.extend(started.servers);
        Ok(())
    }

    /// What the model is offered, in the order the tools were named.
    pub fn specs(&self) -> &ToolSpecs {
        &self.specs
    }

    pub fn names(&self) -> Vec<&str> {
        self.tools.iter().map(|t| t.name()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tools.iter().any(|t| t.name() == name)
    }

    pub fn working_dir(&self) -> &Path {
        &self.working_dir
    }

    /// Runs one tool call. Never fails: an unknown tool or malformed arguments
    /// come back as an unsuccessful result the model can read and correct.
    pub async fn call(&self, call: &ToolCall) -> ToolResult {
        let span = tool_span(call);
        let result = self.call_traced(call).instrument(span.clone()).await;
        record_tool_result(&span, &result);
        result
    }

    async fn call_traced(&self, call: &ToolCall) -> ToolResult {
        let output = match self.tools.iter().find(|t| t.name() == call.name) {
            None => ToolOutput::error(format!(
                "Tool '{}' not found. Available tools: [{}]",
                call.name,
                self.names()
                    .iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(tool) => match arguments_of(call) {
                Ok(args) => tool.call(&args).await,
                Err(e) => ToolOutput::error(e),
            },
        };
        ToolResult {
            call_id: call.call_id.clone(),
            name: call.name.clone(),
            success: output.error.is_none(),
            result: output.output,
            error: output.error,
        }
    }

    /// Ends every process the tools started: SIGTERM to each process group,
    /// SIGKILL after the grace period. A command in progress is interrupted.
    pub async fn shutdown(&self) {
        for tool in &self.tools {
            tool.shutdown().await;
        }
        mcp::McpTools::shutdown(&self.mcp_servers, self.options.kill_grace).await;
    }
}

/// The span of one tool call (GenAI semantic conventions: `execute_tool`).
pub(crate) fn tool_span(call: &ToolCall) -> tracing::Span {
    tracing::info_span!(
        "execute_tool",
        otel.name = format_args!("execute_tool {}", call.name),
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = call.name.as_str(),
        gen_ai.tool.call.id = call.call_id.as_str(),
        error.type = tracing::field::Empty,
    )
}

/// Marks a tool call's span failed when the tool reported an error.
pub(crate) fn record_tool_result(span: &tracing::Span, result: &ToolResult) {
    if !result.success {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", "tool_error");
    }
}

/// The call's arguments as a JSON object: malformed JSON (kept in
/// `raw_arguments` by the provider client) and non-objects are refused.
fn arguments_of(call: &ToolCall) -> Result<args::Args, String> {
    match &call.arguments {
        Value::Object(map) => Ok(map.clone()),
        Value::Null => match call.raw_arguments.as_deref().map(str::trim) {
            None | Some("") => Ok(args::Args::new()),
            Some(raw) => Err(format!(
                "The arguments of `{}` are not valid JSON, so the tool was not run. Send a JSON object matching the \
                 tool's schema. Received: {}",
                call.name,
                clip::clip_middle(raw, 2_000, 0)
            )),
        },
        // Some models send the object JSON-encoded as a string.
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(format!(
                "The arguments of `{}` must be a JSON object, got a string",
                call.name
            )),
        },
        _ => Err(format!(
            "The arguments of `{}` must be a JSON object",
            call.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            call_id: "c1".into(),
            name: name.into(),
            arguments,
            raw_arguments: None,
        }
    }

    #[test]
    fn builtin_specs_are_listed_in_a_stable_order() {
        let names: Vec<_> = builtin_tool_specs().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "bash",
                "str_replace_based_edit_tool",
                "sequentialthinking",
                "task_done",
                "json_edit_tool",
                "ckg"
            ]
        );
        for spec in builtin_tool_specs() {
            assert_eq!(spec.parameters["type"], "object", "{}", spec.name);
            assert!(!spec.description.is_empty());
        }
    }

    #[test]
    fn unknown_tool_names_and_bad_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = ToolSet::new(&["bash", "lsp"], dir.path()).unwrap_err();
        assert_eq!(err, ToolSetError::UnknownTool { name: "lsp".into() });
        assert!(err.to_string().contains("unknown tool `lsp`"));
        assert!(err.to_string().ends_with("json_edit_tool, ckg"), "{err}");
        let set = ToolSet::new(&["bash", "ckg"], dir.path()).unwrap();
        assert_eq!(set.names(), ["bash", "ckg"]);
        assert!(matches!(
            ToolSet::new(&["bash"], "relative"),
            Err(ToolSetError::BadWorkingDir(_))
        ));
        assert!(matches!(
            ToolSet::new(&["bash"], dir.path().join("missing")),
            Err(ToolSetError::BadWorkingDir(_))
        ));
        let set = ToolSet::new(&["task_done", "bash", "task_done"], dir.path()).unwrap();
        assert_eq!(set.names(), ["task_done", "bash"]);
        assert_eq!(set.specs().len(), 2);
    }

    #[tokio::test]
    async fn malformed_arguments_become_tool_errors() {
        let dir = tempfile::tempdir().unwrap();
        let set = ToolSet::new(&BUILTIN_TOOL_NAMES, dir.path()).unwrap();
        let mut bad = call("str_replace_based_edit_tool", Value::Null);
        bad.raw_arguments = Some("{\"command\": \"view\", \"path\": ".into());
        let result = set.call(&bad).await;
        assert!(!result.success);
        assert_eq!(result.call_id, "c1");
        assert!(
            result
                .error
                .as_deref()
                .unwrap_or("")
                .contains("not valid JSON"),
            "{result:?}"
        );

        let result = set.call(&call("bash", json!([1, 2]))).await;
        assert!(!result.success);
        let result = set.call(&call("bash", json!({"command": 42}))).await;
        assert!(
            !result.success
                && result
                    .error
                    .as_deref()
                    .unwrap_or("")
                    .contains("No command provided")
        );
        let result = set.call(&call("nope", json!({}))).await;
        assert!(
            result
                .error
                .as_deref()
                .unwrap_or("")
                .starts_with("Tool 'nope' not found.")
        );
        // A JSON-encoded object in a string is accepted.
        let result = set.call(&call("task_done", json!("{}"))).await;
        assert!(result.success, "{result:?}");
        assert_eq!(result.result, "Task done.");
        set.shutdown().await;
    }

    #[tokio::test]
    async fn tools_run_in_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let set = ToolSet::new(&["bash", "str_replace_based_edit_tool"], dir.path()).unwrap();
        let path = dir.path().join("hello.txt");
        let created = set
            .call(&call(
                "str_replace_based_edit_tool",
                json!({"command": "create", "path": path.display().to_string(), "file_text": "hi\n"}),
            ))
            .await;
        assert!(created.success, "{created:?}");
        let result = set
            .call(&call("bash", json!({"command": "cat hello.txt"})))
            .await;
        assert_eq!(result.result, "hi");
        set.shutdown().await;
    }
}
