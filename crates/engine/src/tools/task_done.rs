//! `task_done`: the model's way of saying it has finished. The agent loop
//! intercepts it (to check `must_patch` first); answered here only when a
//! `ToolSet` is used on its own.

use async_trait::async_trait;
use serde_json::json;

use super::args::Args;
use super::{Tool, ToolOutput};
use crate::messages::ToolSpec;

pub const NAME: &str = "task_done";

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.into(),
        description: "Report the completion of the task. Note that you cannot call this tool before any verification \
is done. You can write reproduce / test scripts to verify your solution."
            .into(),
        parameters: json!({ "type": "object", "properties": {}, "required": [] }),
    }
}

pub(crate) struct TaskDoneTool;

#[async_trait]
impl Tool for TaskDoneTool {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn call(&self, _args: &Args) -> ToolOutput {
        ToolOutput::ok("Task done.")
    }
}
