//! What the store keeps: tasks, steps, artifacts and events, in domain terms.
//! The API layer turns these into each dialect's wire shapes.

use serde_json::{Map, Value};

/// Lower-case on the wire, exactly as the documents print them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Created,
    Running,
    Completed,
    Failed,
    Stopped,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Created,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Created => "created",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Stopped
        )
    }
}

/// Which API created a task (both can read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Trae,
    AgentProtocol,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Trae => "trae",
            Origin::AgentProtocol => "agent_protocol",
        }
    }
    pub fn parse(s: &str) -> Self {
        if s == "trae" {
            Origin::Trae
        } else {
            Origin::AgentProtocol
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub task_id: String,
    pub input: String,
    pub additional_input: Map<String, Value>,
    pub status: TaskStatus,
    pub origin: Origin,
    /// Run settings of a Trae run (working_dir, provider, ...), as JSON.
    pub run_spec: Option<Value>,
    pub created_at: i64,
    pub modified_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    /// The name of the API key that created the task (None without keys).
    pub owner: Option<String>,
}

impl Task {
    /// A new task, `created`, with nothing run yet.
    pub fn new(
        task_id: String,
        input: String,
        additional_input: Map<String, Value>,
        origin: Origin,
        now: i64,
    ) -> Self {
        Task {
            task_id,
            input,
            additional_input,
            status: TaskStatus::Created,
            origin,
            run_spec: None,
            created_at: now,
            modified_at: now,
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            owner: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub step_id: String,
    pub task_id: String,
    pub number: i64,
    pub name: String,
    /// created, running or completed (the official Agent Protocol values).
    pub status: String,
    /// The outcome: running, completed, failed or stopped.
    pub state: String,
    pub input: String,
    pub additional_input: Map<String, Value>,
    pub output: String,
    pub additional_output: Map<String, Value>,
    pub is_last: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub artifact_id: String,
    pub task_id: String,
    pub step_id: Option<String>,
    pub file_name: String,
    /// As the client gave it (directory or full path), normalised.
    pub relative_path: String,
    /// Where the file is, relative to the task workspace.
    pub location: String,
    pub file_size: i64,
    pub agent_created: bool,
    pub created_at: i64,
}

/// One entry of a task's event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub task_id: String,
    pub seq: i64,
    pub kind: String,
    pub timestamp: i64,
    /// message, result, error and data, as a JSON object.
    pub body: Map<String, Value>,
}

/// Which tasks to list, and which slice of them.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    /// Only the tasks of this owner (see [`Task::owner`]).
    pub owner: Option<String>,
    pub status: Option<TaskStatus>,
    pub created_after: Option<i64>,
    pub offset: i64,
    pub limit: i64,
}

/// Counters summed over every stored task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub by_status: Vec<(TaskStatus, i64)>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}
