//! `sequentialthinking`: a scratchpad for step-by-step reasoning. It records
//! nothing but counts; the value is in making the model write thoughts down.

use std::collections::BTreeSet;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::json;

use super::args::{
    Args, optional_bool, optional_int, optional_str, required_bool, required_int, required_str,
};
use super::{Tool, ToolOutput};
use crate::messages::ToolSpec;

pub(crate) const NAME: &str = "sequentialthinking";

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.into(),
        description:
            "A detailed tool for dynamic and reflective problem-solving through thoughts.\n\
This tool helps analyze problems through a flexible thinking process that can adapt and evolve.\n\
Each thought can build on, question, or revise previous insights as understanding deepens.\n\
\n\
When to use this tool:\n\
- Breaking down complex problems into steps\n\
- Planning and design with room for revision\n\
- Analysis that might need course correction\n\
- Problems where the full scope might not be clear initially\n\
- Tasks that need to maintain context over multiple steps\n\
\n\
Key features:\n\
- You can adjust total_thoughts up or down as you progress\n\
- You can question or revise previous thoughts (is_revision, revises_thought)\n\
- You can branch from an earlier thought (branch_from_thought, branch_id)\n\
- You can add more thoughts even after reaching what seemed like the end (needs_more_thoughts)\n\
\n\
You should:\n\
1. Start with an initial estimate of needed thoughts, but be ready to adjust\n\
2. Question or revise previous thoughts when needed, and mark such thoughts\n\
3. Generate a solution hypothesis and verify it against the chain of thoughts\n\
4. Only set next_thought_needed to false when truly done and a satisfactory answer is reached\n"
                .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "thought": { "type": "string", "description": "Your current thinking step." },
                "next_thought_needed": { "type": "boolean", "description": "Whether another thought step is needed." },
                "thought_number": { "type": "integer", "minimum": 1, "description": "Current thought number (can go beyond the initial total)." },
                "total_thoughts": { "type": "integer", "minimum": 1, "description": "Estimated total thoughts needed (can be adjusted)." },
                "is_revision": { "type": "boolean", "description": "Whether this revises previous thinking." },
                "revises_thought": { "type": "integer", "minimum": 1, "description": "Which thought is being reconsidered." },
                "branch_from_thought": { "type": "integer", "minimum": 1, "description": "Branching point thought number." },
                "branch_id": { "type": "string", "description": "Branch identifier." },
                "needs_more_thoughts": { "type": "boolean", "description": "If more thoughts are needed after reaching the end." }
            },
            "required": ["thought", "next_thought_needed", "thought_number", "total_thoughts"]
        }),
    }
}

#[derive(Default)]
struct History {
    thoughts: usize,
    branches: BTreeSet<String>,
}

#[derive(Default)]
pub(crate) struct ThinkingTool {
    history: Mutex<History>,
}

#[async_trait]
impl Tool for ThinkingTool {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn call(&self, args: &Args) -> ToolOutput {
        match self.think(args) {
            Ok(out) => ToolOutput::ok(out),
            Err(e) => ToolOutput::error(format!("Sequential thinking failed: {e}")),
        }
    }
}

impl ThinkingTool {
    fn think(&self, args: &Args) -> Result<String, String> {
        let thought = required_str(args, "thought")?;
        if thought.trim().is_empty() {
            return Err("Parameter `thought` must not be empty".into());
        }
        let next_thought_needed = required_bool(args, "next_thought_needed")?;
        let thought_number = required_int(args, "thought_number")?;
        let mut total_thoughts = required_int(args, "total_thoughts")?;
        if thought_number < 1 {
            return Err("thought_number must be at least 1".into());
        }
        if total_thoughts < 1 {
            return Err("total_thoughts must be at least 1".into());
        }
        optional_bool(args, "is_revision")?;
        optional_bool(args, "needs_more_thoughts")?;
        // 0 is what some models send for "not set".
        for key in ["revises_thought", "branch_from_thought"] {
            if optional_int(args, key)?.is_some_and(|n| n < 0) {
                return Err(format!("{key} must be a positive integer"));
            }
        }
        let branch_from = optional_int(args, "branch_from_thought")?.filter(|n| *n > 0);
        let branch_id = optional_str(args, "branch_id")?;
        total_thoughts = total_thoughts.max(thought_number);

        let mut history = self
            .history
            .lock()
            .map_err(|_| "thought history unavailable".to_string())?;
        history.thoughts += 1;
        if let (Some(_), Some(id)) = (branch_from, branch_id) {
            history.branches.insert(id.to_string());
        }
        let status = json!({
            "thought_number": thought_number,
            "total_thoughts": total_thoughts,
            "next_thought_needed": next_thought_needed,
            "branches": history.branches.iter().collect::<Vec<_>>(),
            "thought_history_length": history.thoughts,
        });
        let status = serde_json::to_string_pretty(&status).unwrap_or_default();
        Ok(format!(
            "Sequential thinking step completed.\n\nStatus:\n{status}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: serde_json::Value) -> Args {
        v.as_object().cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn counts_thoughts_and_branches() {
        let t = ThinkingTool::default();
        let out = t
            .call(&args(json!({"thought": "a", "next_thought_needed": true, "thought_number": 1, "total_thoughts": 3})))
            .await;
        assert!(out.error.is_none());
        assert!(
            out.output
                .starts_with("Sequential thinking step completed.\n\nStatus:\n")
        );
        let out = t
            .call(&args(json!({"thought": "b", "next_thought_needed": false, "thought_number": 5, "total_thoughts": 3,
                "branch_from_thought": 1, "branch_id": "alt", "revises_thought": 0})))
            .await;
        assert!(
            out.output.contains("\"total_thoughts\": 5"),
            "{}",
            out.output
        );
        assert!(out.output.contains("\"thought_history_length\": 2"));
        assert!(out.output.contains("\"alt\""));
    }

    #[tokio::test]
    async fn rejects_bad_input() {
        let t = ThinkingTool::default();
        let out = t
            .call(&args(
                json!({"thought": "a", "thought_number": 1, "total_thoughts": 1}),
            ))
            .await;
        assert_eq!(
            out.error.as_deref(),
            Some("Sequential thinking failed: Parameter `next_thought_needed` is required")
        );
        let out = t
            .call(&args(json!({"thought": "a", "next_thought_needed": true, "thought_number": 0, "total_thoughts": 1})))
            .await;
        assert!(
            out.error
                .unwrap()
                .contains("thought_number must be at least 1")
        );
    }
}
