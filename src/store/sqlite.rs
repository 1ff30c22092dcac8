//! The SQLite store: WAL journal with `synchronous = FULL`, so a write is on
//! disk when its call returns (see README, "Durability").

use std::{path::Path, str::FromStr, time::Duration};

use anyhow::Context as _;
use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::{
    Row, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use super::{Artifact, Event, Origin, Step, Store, Task, TaskQuery, TaskStatus, Totals};
use crate::error::Result;

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .with_context(|| format!("opening database {}", path.display()))?;
        sqlx::migrate!("src/store/migrations")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        Ok(Self { pool })
    }
}

fn json_text(map: &Map<String, Value>) -> String {
    Value::Object(map.clone()).to_string()
}

fn json_map(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn task_from_row(r: &SqliteRow) -> Result<Task> {
    let status: String = r.try_get("status")?;
    Ok(Task {
        task_id: r.try_get("task_id")?,
        input: r.try_get("input")?,
        additional_input: json_map(&r.try_get::<String, _>("additional_input")?),
        status: TaskStatus::parse(&status)
            .with_context(|| format!("unknown task status {status:?} in database"))?,
        origin: Origin::parse(&r.try_get::<String, _>("origin")?),
        run_spec: r
            .try_get::<Option<String>, _>("run_spec")?
            .and_then(|s| serde_json::from_str(&s).ok()),
        created_at: r.try_get("created_at")?,
        modified_at: r.try_get("modified_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        result: r.try_get("result")?,
        error: r.try_get("error")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        cost_usd: r.try_get("cost_usd")?,
    })
}

fn step_from_row(r: &SqliteRow) -> Result<Step> {
    Ok(Step {
        step_id: r.try_get("step_id")?,
        task_id: r.try_get("task_id")?,
        number: r.try_get("number")?,
        name: r.try_get("name")?,
        status: r.try_get("status")?,
        state: r.try_get("state")?,
        input: r.try_get("input")?,
        additional_input: json_map(&r.try_get::<String, _>("additional_input")?),
        output: r.try_get("output")?,
        additional_output: json_map(&r.try_get::<String, _>("additional_output")?),
        is_last: r.try_get("is_last")?,
        created_at: r.try_get("created_at")?,
    })
}

fn artifact_from_row(r: &SqliteRow) -> Result<Artifact> {
    Ok(Artifact {
        artifact_id: r.try_get("artifact_id")?,
        task_id: r.try_get("task_id")?,
        step_id: r.try_get("step_id")?,
        file_name: r.try_get("file_name")?,
        relative_path: r.try_get("relative_path")?,
        location: r.try_get("location")?,
        file_size: r.try_get("file_size")?,
        agent_created: r.try_get("agent_created")?,
        created_at: r.try_get("created_at")?,
    })
}

async fn update_task_in(conn: &mut sqlx::SqliteConnection, t: &Task) -> Result<()> {
    sqlx::query(
        "UPDATE tasks SET status = ?, run_spec = ?, modified_at = ?, started_at = ?, finished_at = ?, \
         result = ?, error = ?, input_tokens = ?, output_tokens = ?, cost_usd = ? WHERE task_id = ?",
    )
    .bind(t.status.as_str())
    .bind(t.run_spec.as_ref().map(Value::to_string))
    .bind(t.modified_at)
    .bind(t.started_at)
    .bind(t.finished_at)
    .bind(&t.result)
    .bind(&t.error)
    .bind(t.input_tokens)
    .bind(t.output_tokens)
    .bind(t.cost_usd)
    .bind(&t.task_id)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_task(&self, t: &Task) -> Result<()> {
        sqlx::query(
            "INSERT INTO tasks (task_id, input, additional_input, status, origin, run_spec, created_at, \
             modified_at, started_at, finished_at, result, error, input_tokens, output_tokens, cost_usd) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.task_id)
        .bind(&t.input)
        .bind(json_text(&t.additional_input))
        .bind(t.status.as_str())
        .bind(t.origin.as_str())
        .bind(t.run_spec.as_ref().map(Value::to_string))
        .bind(t.created_at)
        .bind(t.modified_at)
        .bind(t.started_at)
        .bind(t.finished_at)
        .bind(&t.result)
        .bind(&t.error)
        .bind(t.input_tokens)
        .bind(t.output_tokens)
        .bind(t.cost_usd)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<Task>> {
        let row = sqlx::query("SELECT * FROM tasks WHERE task_id = ?")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn update_task(&self, t: &Task) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        update_task_in(&mut conn, t).await
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<(Vec<Task>, i64)> {
        let status = q.status.map(TaskStatus::as_str);
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR created_at > ?2)",
        )
            .bind(status)
            .bind(q.created_after)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR created_at > ?2) \
             ORDER BY created_at, task_id LIMIT ?3 OFFSET ?4",
        )
        .bind(status)
        .bind(q.created_after)
        .bind(q.limit)
        .bind(q.offset)
        .fetch_all(&self.pool)
        .await?;
        let tasks = rows.iter().map(task_from_row).collect::<Result<_>>()?;
        Ok((tasks, total))
    }

    async fn delete_task(&self, task_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM tasks WHERE task_id = ?")
            .bind(task_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn totals(&self) -> Result<Totals> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut by_status = Vec::new();
        for r in &rows {
            if let Some(st) = TaskStatus::parse(&r.try_get::<String, _>("status")?) {
                by_status.push((st, r.try_get("n")?));
            }
        }
        let sums = sqlx::query(
            "SELECT COALESCE(SUM(input_tokens), 0) AS i, COALESCE(SUM(output_tokens), 0) AS o, \
             COALESCE(SUM(cost_usd), 0.0) AS c FROM tasks",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Totals {
            by_status,
            input_tokens: sums.try_get("i")?,
            output_tokens: sums.try_get("o")?,
            cost_usd: sums.try_get("c")?,
        })
    }

    async fn save_step(&self, s: &Step) -> Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO steps (step_id, task_id, number, name, status, state, input, \
             additional_input, output, additional_output, is_last, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.step_id)
        .bind(&s.task_id)
        .bind(s.number)
        .bind(&s.name)
        .bind(&s.status)
        .bind(&s.state)
        .bind(&s.input)
        .bind(json_text(&s.additional_input))
        .bind(&s.output)
        .bind(json_text(&s.additional_output))
        .bind(s.is_last)
        .bind(s.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_step(&self, task_id: &str, step_id: &str) -> Result<Option<Step>> {
        let row = sqlx::query("SELECT * FROM steps WHERE task_id = ? AND step_id = ?")
            .bind(task_id)
            .bind(step_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(step_from_row).transpose()
    }

    async fn list_steps(&self, task_id: &str, offset: i64, limit: i64) -> Result<(Vec<Step>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM steps WHERE task_id = ?")
            .bind(task_id)
            .fetch_one(&self.pool)
            .await?;
        let rows =
            sqlx::query("SELECT * FROM steps WHERE task_id = ? ORDER BY number LIMIT ? OFFSET ?")
                .bind(task_id)
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?;
        Ok((
            rows.iter().map(step_from_row).collect::<Result<_>>()?,
            total,
        ))
    }

    async fn upsert_artifact(&self, a: &Artifact, step_id: Option<&str>) -> Result<Artifact> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO artifacts (artifact_id, task_id, step_id, file_name, relative_path, location, \
             file_size, agent_created, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (task_id, location) DO UPDATE SET file_name = excluded.file_name, \
             relative_path = excluded.relative_path, file_size = excluded.file_size, \
             agent_created = excluded.agent_created RETURNING *",
        )
        .bind(&a.artifact_id)
        .bind(&a.task_id)
        .bind(&a.step_id)
        .bind(&a.file_name)
        .bind(&a.relative_path)
        .bind(&a.location)
        .bind(a.file_size)
        .bind(a.agent_created)
        .bind(a.created_at)
        .fetch_one(&mut *tx)
        .await?;
        let stored = artifact_from_row(&row)?;
        if let Some(step_id) = step_id {
            sqlx::query(
                "INSERT OR IGNORE INTO step_artifacts (step_id, artifact_id) VALUES (?, ?)",
            )
            .bind(step_id)
            .bind(&stored.artifact_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn artifacts_of_steps(&self, step_ids: &[String]) -> Result<Vec<(String, Artifact)>> {
        if step_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = Value::from(step_ids.to_vec()).to_string();
        let rows = sqlx::query(
            "SELECT s.step_id AS linked_step, a.* FROM step_artifacts s \
             JOIN artifacts a ON a.artifact_id = s.artifact_id \
             WHERE s.step_id IN (SELECT value FROM json_each(?)) ORDER BY a.created_at, a.artifact_id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("linked_step")?, artifact_from_row(r)?)))
            .collect()
    }

    async fn get_artifact(&self, task_id: &str, artifact_id: &str) -> Result<Option<Artifact>> {
        let row = sqlx::query("SELECT * FROM artifacts WHERE task_id = ? AND artifact_id = ?")
            .bind(task_id)
            .bind(artifact_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(artifact_from_row).transpose()
    }

    async fn list_artifacts(
        &self,
        task_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Artifact>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM artifacts WHERE task_id = ?")
            .bind(task_id)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT * FROM artifacts WHERE task_id = ? ORDER BY created_at, artifact_id LIMIT ? OFFSET ?",
        )
        .bind(task_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        Ok((
            rows.iter().map(artifact_from_row).collect::<Result<_>>()?,
            total,
        ))
    }

    async fn artifacts_of(&self, task_ids: &[String]) -> Result<Vec<Artifact>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        // json_each keeps this one statement whatever the number of ids.
        let ids = Value::from(task_ids.to_vec()).to_string();
        let rows = sqlx::query(
            "SELECT * FROM artifacts WHERE task_id IN (SELECT value FROM json_each(?)) \
             ORDER BY created_at, artifact_id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(artifact_from_row).collect()
    }

    async fn delete_artifact(&self, task_id: &str, artifact_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM artifacts WHERE task_id = ? AND artifact_id = ?")
            .bind(task_id)
            .bind(artifact_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn append_events(&self, events: &[Event], task: Option<&Task>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for e in events {
            sqlx::query(
                "INSERT INTO events (task_id, seq, type, timestamp, body) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&e.task_id)
            .bind(e.seq)
            .bind(&e.kind)
            .bind(e.timestamp)
            .bind(json_text(&e.body))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(t) = task {
            update_task_in(&mut tx, t).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn last_event_seq(&self, task_id: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events WHERE task_id = ?")
                .bind(task_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn list_events(&self, task_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT task_id, seq, type, timestamp, body FROM events WHERE task_id = ? AND seq > ? \
             ORDER BY seq LIMIT ?",
        )
        .bind(task_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    task_id: r.try_get("task_id")?,
                    seq: r.try_get("seq")?,
                    kind: r.try_get("type")?,
                    timestamp: r.try_get("timestamp")?,
                    body: json_map(&r.try_get::<String, _>("body")?),
                })
            })
            .collect()
    }
}
