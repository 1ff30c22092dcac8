//! Rows to domain values, for both stores: their tables have the same columns
//! (SQLite's INTEGER/REAL are PostgreSQL's BIGINT/DOUBLE PRECISION/BOOLEAN),
//! so each backend only says how to read one column of each Rust type.

use anyhow::Context as _;
use serde_json::{Map, Value};
use sqlx::Row as _;

use super::{Artifact, Event, Origin, Step, Task, TaskStatus, Totals};
use crate::error::Result;

/// Typed reads of one row's columns by name.
pub(super) trait Columns {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn float(&self, col: &str) -> Result<f64>;
    fn flag(&self, col: &str) -> Result<bool>;
}

macro_rules! columns_of {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, col: &str) -> Result<String> {
                Ok(self.try_get(col)?)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>> {
                Ok(self.try_get(col)?)
            }
            fn int(&self, col: &str) -> Result<i64> {
                Ok(self.try_get(col)?)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>> {
                Ok(self.try_get(col)?)
            }
            fn float(&self, col: &str) -> Result<f64> {
                Ok(self.try_get(col)?)
            }
            fn flag(&self, col: &str) -> Result<bool> {
                Ok(self.try_get(col)?)
            }
        }
    };
}

columns_of!(sqlx::sqlite::SqliteRow);
columns_of!(sqlx::postgres::PgRow);

/// A JSON object as the text both stores keep (serde_json keeps key order).
pub(super) fn json_text(map: &Map<String, Value>) -> String {
    // Serializing a map of `Value`s cannot fail.
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

pub(super) fn json_map(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

pub(super) fn task(r: &impl Columns) -> Result<Task> {
    let status = r.text("status")?;
    Ok(Task {
        task_id: r.text("task_id")?,
        input: r.text("input")?,
        additional_input: json_map(&r.text("additional_input")?),
        status: TaskStatus::parse(&status)
            .with_context(|| format!("unknown task status {status:?} in database"))?,
        origin: Origin::parse(&r.text("origin")?),
        run_spec: r
            .opt_text("run_spec")?
            .and_then(|s| serde_json::from_str(&s).ok()),
        created_at: r.int("created_at")?,
        modified_at: r.int("modified_at")?,
        started_at: r.opt_int("started_at")?,
        finished_at: r.opt_int("finished_at")?,
        result: r.opt_text("result")?,
        error: r.opt_text("error")?,
        input_tokens: r.int("input_tokens")?,
        output_tokens: r.int("output_tokens")?,
        cost_usd: r.float("cost_usd")?,
        owner: r.opt_text("owner")?,
    })
}

/// Per-status rows of `status, n, input_tokens, output_tokens, cost_usd`
/// (the counters, or a GROUP BY of one owner's tasks).
pub(super) fn totals(rows: &[impl Columns]) -> Result<Totals> {
    let mut totals = Totals::default();
    for r in rows {
        if let Some(st) = TaskStatus::parse(&r.text("status")?) {
            totals.by_status.push((st, r.int("n")?));
        }
        totals.input_tokens += r.int("input_tokens")?;
        totals.output_tokens += r.int("output_tokens")?;
        totals.cost_usd += r.float("cost_usd")?;
    }
    Ok(totals)
}

pub(super) fn step(r: &impl Columns) -> Result<Step> {
    Ok(Step {
        step_id: r.text("step_id")?,
        task_id: r.text("task_id")?,
        number: r.int("number")?,
        name: r.text("name")?,
        status: r.text("status")?,
        state: r.text("state")?,
        input: r.text("input")?,
        additional_input: json_map(&r.text("additional_input")?),
        output: r.text("output")?,
        additional_output: json_map(&r.text("additional_output")?),
        is_last: r.flag("is_last")?,
        created_at: r.int("created_at")?,
    })
}

pub(super) fn artifact(r: &impl Columns) -> Result<Artifact> {
    Ok(Artifact {
        artifact_id: r.text("artifact_id")?,
        task_id: r.text("task_id")?,
        step_id: r.opt_text("step_id")?,
        file_name: r.text("file_name")?,
        relative_path: r.text("relative_path")?,
        location: r.text("location")?,
        file_size: r.int("file_size")?,
        agent_created: r.flag("agent_created")?,
        created_at: r.int("created_at")?,
    })
}

pub(super) fn event(r: &impl Columns) -> Result<Event> {
    Ok(Event {
        task_id: r.text("task_id")?,
        seq: r.int("seq")?,
        kind: r.text("type")?,
        timestamp: r.int("timestamp")?,
        body: json_map(&r.text("body")?),
    })
}
