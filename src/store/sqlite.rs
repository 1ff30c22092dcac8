//! The SQLite store: WAL journal with `synchronous = FULL`, so a write is on
//! disk when its call returns (see README, "Durability"). Reads use a pool of
//! connections; writes go through the group-committing [`Writer`].

use std::{
    path::Path,
    str::FromStr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context as _;
use async_trait::async_trait;
use serde_json::Value;
use sqlx::{
    Row, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{
    Artifact, Event, Step, Store, Task, TaskQuery, TaskStatus, Totals,
    cache::ReadCache,
    decode::{self, json_text},
    writer::{Row as InsertRow, Writer},
};
use crate::error::Result;

mod checkpoints;
mod runs;

pub struct SqliteStore {
    /// Readers: WAL lets them run beside the writer.
    pool: SqlitePool,
    writer: Writer,
    /// Hot tasks, their artifacts and event logs; every write of a task
    /// drops its entries once committed.
    cache: ReadCache,
}

/// The read cache's default size (estimated bytes of cached rows).
pub const DEFAULT_READ_CACHE_BYTES: u64 = 32 << 20;

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with_cache(path, DEFAULT_READ_CACHE_BYTES).await
    }

    /// As [`SqliteStore::open`], with a read cache of `cache_bytes` (0: none).
    pub async fn open_with_cache(path: &Path, cache_bytes: u64) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // A local file does not go stale; the default ping costs a round
            // trip to the connection's worker thread on every acquire.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening database {}", path.display()))?;
        sqlx::migrate!("src/store/migrations/sqlite")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        let writer = Writer::open(&options)
            .await
            .context("opening the database writer")?;
        Ok(Self {
            pool,
            writer,
            cache: ReadCache::new(cache_bytes),
        })
    }
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

const INSERT_TASK: &str = "INSERT INTO tasks (task_id, input, additional_input, status, origin, \
     run_spec, created_at, modified_at, started_at, finished_at, result, error, input_tokens, \
     output_tokens, cost_usd, owner) VALUES ";
const TASK_VALUES: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// A task's row for the writer's multi-row INSERT ([`Writer::insert_row`]).
fn task_row(t: Task) -> InsertRow {
    let (additional_input, run_spec) = (
        json_text(&t.additional_input),
        t.run_spec.as_ref().map(Value::to_string),
    );
    InsertRow {
        insert: INSERT_TASK,
        values: TASK_VALUES,
        bind: Box::new(move |q| {
            q.bind(t.task_id.clone())
                .bind(t.input.clone())
                .bind(additional_input.clone())
                .bind(t.status.as_str())
                .bind(t.origin.as_str())
                .bind(run_spec.clone())
                .bind(t.created_at)
                .bind(t.modified_at)
                .bind(t.started_at)
                .bind(t.finished_at)
                .bind(t.result.clone())
                .bind(t.error.clone())
                .bind(t.input_tokens)
                .bind(t.output_tokens)
                .bind(t.cost_usd)
                .bind(t.owner.clone())
        }),
    }
}

/// One task row in the caller's transaction, bound as the writer binds it.
async fn insert_task_in(conn: &mut sqlx::SqliteConnection, t: &Task) -> Result<()> {
    let row = task_row(t.clone());
    let sql = format!("{}{}", row.insert, row.values);
    (row.bind)(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .execute(conn)
        .await?;
    Ok(())
}

async fn upsert_artifact_in(
    conn: &mut sqlx::SqliteConnection,
    a: &Artifact,
    step_id: Option<&str>,
) -> Result<Artifact> {
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
    .fetch_one(&mut *conn)
    .await?;
    let stored = decode::artifact(&row)?;
    if let Some(step_id) = step_id {
        sqlx::query("INSERT OR IGNORE INTO step_artifacts (step_id, artifact_id) VALUES (?, ?)")
            .bind(step_id)
            .bind(&stored.artifact_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(stored)
}

/// Events inserted by one statement at most: a batch of events costs one
/// trip to SQLite rather than one per event.
pub(super) const EVENT_ROWS: usize = 32;

/// `INSERT INTO events … VALUES (…), (…)` with `rows` rows (1 to [`EVENT_ROWS`]).
fn insert_events_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let sql = SQL.get_or_init(|| {
        (0..=EVENT_ROWS)
            .map(|n| {
                format!(
                    "INSERT INTO events (task_id, seq, type, timestamp, body) VALUES {}",
                    vec!["(?, ?, ?, ?, ?)"; n].join(", ")
                )
            })
            .collect()
    });
    &sql[rows]
}

/// `events` with their bodies as JSON text.
async fn append_events_in(
    conn: &mut sqlx::SqliteConnection,
    events: &[(Arc<Event>, String)],
    task: Option<&Task>,
) -> Result<()> {
    for chunk in events.chunks(EVENT_ROWS) {
        let mut insert = sqlx::query(insert_events_sql(chunk.len()));
        for (e, body) in chunk {
            insert = insert
                .bind(&e.task_id)
                .bind(e.seq)
                .bind(&e.kind)
                .bind(e.timestamp)
                .bind(body);
        }
        insert.execute(&mut *conn).await?;
    }
    if let Some(t) = task {
        update_task_in(conn, t).await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_task(&self, t: &Task) -> Result<()> {
        let done = self.writer.insert_row(task_row(t.clone())).await;
        self.cache.invalidate(&t.task_id);
        done
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<Task>> {
        if let Some(task) = self.cache.task(task_id) {
            return Ok(Some(Task::clone(&task)));
        }
        let stamp = self.cache.stamp(task_id);
        let row = sqlx::query("SELECT * FROM tasks WHERE task_id = ?")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        let task = row.as_ref().map(decode::task).transpose()?;
        if let Some(t) = &task {
            self.cache.fill_task(stamp, Arc::new(t.clone()));
        }
        Ok(task)
    }

    async fn update_task(&self, t: &Task) -> Result<()> {
        let task = t.clone();
        self.write_tasks_statement(&[&t.task_id], move |conn| {
            Box::pin(async move { update_task_in(conn, &task).await })
        })
        .await
    }

    async fn set_usage(
        &self,
        task_id: &str,
        input_tokens: i64,
        output_tokens: i64,
        cost_usd: f64,
        modified_at: i64,
    ) -> Result<()> {
        let id = task_id.to_string();
        self.write_tasks_statement(&[task_id], move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE tasks SET input_tokens = ?, output_tokens = ?, cost_usd = ?, \
                         modified_at = ? WHERE task_id = ?",
                )
                .bind(input_tokens)
                .bind(output_tokens)
                .bind(cost_usd)
                .bind(modified_at)
                .bind(&id)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<(Vec<Task>, i64)> {
        // One statement per filter combination, so SQLite walks the matching
        // index (`x IS NULL OR` conditions would scan every task). Pages are
        // picked by rowid on the covering index, so a deep OFFSET skips index
        // entries rather than rows; counts without a time filter come from
        // `task_counts`.
        let status = q.status.map(TaskStatus::as_str);
        if let Some(owner) = &q.owner {
            return self.list_tasks_of(owner, status, q).await;
        }
        let (total, rows) = match (status, q.created_after) {
            (None, None) => (
                sqlx::query_scalar("SELECT COALESCE(SUM(n), 0) FROM task_counts")
                    .fetch_one(&self.pool)
                    .await?,
                sqlx::query(
                    "SELECT * FROM tasks WHERE rowid IN (SELECT rowid FROM tasks \
                     ORDER BY created_at, task_id LIMIT ?1 OFFSET ?2) ORDER BY created_at, task_id",
                )
                .bind(q.limit)
                .bind(q.offset)
                .fetch_all(&self.pool)
                .await?,
            ),
            (Some(status), None) => (
                sqlx::query_scalar("SELECT COALESCE(SUM(n), 0) FROM task_counts WHERE status = ?1")
                    .bind(status)
                    .fetch_one(&self.pool)
                    .await?,
                sqlx::query(
                    "SELECT * FROM tasks WHERE rowid IN (SELECT rowid FROM tasks WHERE status = ?1 \
                     ORDER BY created_at, task_id LIMIT ?2 OFFSET ?3) ORDER BY created_at, task_id",
                )
                .bind(status)
                .bind(q.limit)
                .bind(q.offset)
                .fetch_all(&self.pool)
                .await?,
            ),
            (None, Some(after)) => (
                sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE created_at > ?1")
                    .bind(after)
                    .fetch_one(&self.pool)
                    .await?,
                sqlx::query(
                    "SELECT * FROM tasks WHERE rowid IN (SELECT rowid FROM tasks WHERE created_at > ?1 \
                     ORDER BY created_at, task_id LIMIT ?2 OFFSET ?3) ORDER BY created_at, task_id",
                )
                .bind(after)
                .bind(q.limit)
                .bind(q.offset)
                .fetch_all(&self.pool)
                .await?,
            ),
            (Some(status), Some(after)) => (
                sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE status = ?1 AND created_at > ?2")
                    .bind(status)
                    .bind(after)
                    .fetch_one(&self.pool)
                    .await?,
                sqlx::query(
                    "SELECT * FROM tasks WHERE rowid IN (SELECT rowid FROM tasks WHERE status = ?1 \
                     AND created_at > ?2 ORDER BY created_at, task_id LIMIT ?3 OFFSET ?4) \
                     ORDER BY created_at, task_id",
                )
                .bind(status)
                .bind(after)
                .bind(q.limit)
                .bind(q.offset)
                .fetch_all(&self.pool)
                .await?,
            ),
        };
        let tasks = rows.iter().map(decode::task).collect::<Result<_>>()?;
        Ok((tasks, total))
    }

    async fn delete_task(&self, task_id: &str) -> Result<bool> {
        let id = task_id.to_string();
        self.write_tasks_statement(&[task_id], move |conn| {
            Box::pin(async move {
                let done = sqlx::query("DELETE FROM tasks WHERE task_id = ?")
                    .bind(&id)
                    .execute(conn)
                    .await?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn totals_of(&self, owner: &str) -> Result<Totals> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n, SUM(input_tokens) AS input_tokens, \
             SUM(output_tokens) AS output_tokens, SUM(cost_usd) AS cost_usd \
             FROM tasks WHERE owner = ? GROUP BY status",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        decode::totals(&rows)
    }

    async fn totals(&self) -> Result<Totals> {
        let rows =
            sqlx::query("SELECT status, n, input_tokens, output_tokens, cost_usd FROM task_counts")
                .fetch_all(&self.pool)
                .await?;
        decode::totals(&rows)
    }

    async fn save_step(&self, s: &Step) -> Result<()> {
        let s = s.clone();
        self.writer
            .write_statement(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        // An upsert, not INSERT OR REPLACE: a replace deletes the row
                        // first, and the delete would cascade to the step's artifact links.
                        "INSERT INTO steps (step_id, task_id, number, name, status, state, input, \
             additional_input, output, additional_output, is_last, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (step_id) DO UPDATE SET \
             number = excluded.number, name = excluded.name, status = excluded.status, \
             state = excluded.state, input = excluded.input, \
             additional_input = excluded.additional_input, output = excluded.output, \
             additional_output = excluded.additional_output, is_last = excluded.is_last, \
             created_at = excluded.created_at",
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
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            })
            .await
    }

    async fn get_step(&self, task_id: &str, step_id: &str) -> Result<Option<Step>> {
        let row = sqlx::query("SELECT * FROM steps WHERE task_id = ? AND step_id = ?")
            .bind(task_id)
            .bind(step_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::step).transpose()
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
        Ok((rows.iter().map(decode::step).collect::<Result<_>>()?, total))
    }

    async fn upsert_artifact(&self, a: &Artifact, step_id: Option<&str>) -> Result<Artifact> {
        let artifact = a.clone();
        let step_id = step_id.map(str::to_string);
        self.write_tasks(&[&a.task_id], move |conn| {
            Box::pin(async move { upsert_artifact_in(conn, &artifact, step_id.as_deref()).await })
        })
        .await
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
            .map(|r| Ok((r.try_get("linked_step")?, decode::artifact(r)?)))
            .collect()
    }

    async fn get_artifact(&self, task_id: &str, artifact_id: &str) -> Result<Option<Artifact>> {
        let row = sqlx::query("SELECT * FROM artifacts WHERE task_id = ? AND artifact_id = ?")
            .bind(task_id)
            .bind(artifact_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::artifact).transpose()
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
            rows.iter().map(decode::artifact).collect::<Result<_>>()?,
            total,
        ))
    }

    async fn artifacts_of(&self, task_ids: &[String]) -> Result<Vec<Artifact>> {
        match task_ids {
            [] => return Ok(Vec::new()),
            // One task (GetTask): cached.
            [task_id] => {
                if let Some(list) = self.cache.artifacts(task_id) {
                    return Ok(Vec::clone(&list));
                }
            }
            _ => {}
        }
        let stamp = (task_ids.len() == 1).then(|| self.cache.stamp(&task_ids[0]));
        // json_each keeps this one statement whatever the number of ids.
        let ids = Value::from(task_ids.to_vec()).to_string();
        let rows = sqlx::query(
            "SELECT * FROM artifacts WHERE task_id IN (SELECT value FROM json_each(?)) \
             ORDER BY created_at, artifact_id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        let artifacts: Vec<Artifact> = rows.iter().map(decode::artifact).collect::<Result<_>>()?;
        if let Some(stamp) = stamp {
            self.cache
                .fill_artifacts(&task_ids[0], stamp, Arc::new(artifacts.clone()));
        }
        Ok(artifacts)
    }

    async fn delete_artifact(&self, task_id: &str, artifact_id: &str) -> Result<bool> {
        let (id, artifact_id) = (task_id.to_string(), artifact_id.to_string());
        self.write_tasks_statement(&[task_id], move |conn| {
            Box::pin(async move {
                let done =
                    sqlx::query("DELETE FROM artifacts WHERE task_id = ? AND artifact_id = ?")
                        .bind(&id)
                        .bind(&artifact_id)
                        .execute(conn)
                        .await?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn append_events(&self, events: &[Arc<Event>], task: Option<&Task>) -> Result<()> {
        // Encoded here rather than on the writer's connection, which every
        // write waits for.
        let batch: Vec<(Arc<Event>, String)> = events
            .iter()
            .map(|e| (e.clone(), json_text(&e.body)))
            .collect();
        let row = task.cloned();
        let mut touched: Vec<&str> = events.iter().map(|e| e.task_id.as_str()).collect();
        touched.extend(task.map(|t| t.task_id.as_str()));
        touched.sort_unstable();
        touched.dedup();
        // One INSERT of up to EVENT_ROWS rows and no task row: one statement.
        let one_statement = task.is_none() && events.len() <= EVENT_ROWS;
        self.write_tasks_as(
            &touched,
            move |conn| Box::pin(async move { append_events_in(conn, &batch, row.as_ref()).await }),
            one_statement,
        )
        .await
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
        // Replays are served from a log cached by `event_log` when there is one.
        if let Some(log) = self.cache.events(task_id) {
            let from = log.partition_point(|e| e.seq <= after_seq);
            let limit = usize::try_from(limit).unwrap_or(0);
            return Ok(log[from..].iter().take(limit).cloned().collect());
        }
        self.read_events(task_id, after_seq, limit).await
    }

    async fn event_log(&self, task_id: &str) -> Result<Arc<Vec<Event>>> {
        if let Some(log) = self.cache.events(task_id) {
            return Ok(log);
        }
        let stamp = self.cache.stamp(task_id);
        let log = Arc::new(self.read_events(task_id, 0, i64::MAX).await?);
        self.cache.fill_events(task_id, stamp, log.clone());
        Ok(log)
    }
}

impl SqliteStore {
    /// One owner's page of tasks (`list_tasks` with `owner`): counted from
    /// the owner's index, since the counters are for all tasks.
    async fn list_tasks_of(
        &self,
        owner: &str,
        status: Option<&str>,
        q: &TaskQuery,
    ) -> Result<(Vec<Task>, i64)> {
        let mut filter = String::from("owner = ?");
        if status.is_some() {
            filter.push_str(" AND status = ?");
        }
        if q.created_after.is_some() {
            filter.push_str(" AND created_at > ?");
        }
        let count_sql = format!("SELECT COUNT(*) FROM tasks WHERE {filter}");
        let page_sql = format!(
            "SELECT * FROM tasks WHERE rowid IN (SELECT rowid FROM tasks WHERE {filter} \
             ORDER BY created_at, task_id LIMIT ? OFFSET ?) ORDER BY created_at, task_id"
        );
        // Only constant fragments above; every value is bound.
        let mut count = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count_sql)).bind(owner);
        let mut page = sqlx::query(sqlx::AssertSqlSafe(page_sql)).bind(owner);
        if let Some(status) = status {
            count = count.bind(status);
            page = page.bind(status);
        }
        if let Some(after) = q.created_after {
            count = count.bind(after);
            page = page.bind(after);
        }
        let total = count.fetch_one(&self.pool).await?;
        let rows = page
            .bind(q.limit)
            .bind(q.offset)
            .fetch_all(&self.pool)
            .await?;
        let tasks = rows.iter().map(decode::task).collect::<Result<_>>()?;
        Ok((tasks, total))
    }

    /// A write of these tasks' rows: their cached entries are dropped once it
    /// committed (or failed), before the caller is answered.
    async fn write_tasks<T, F>(&self, task_ids: &[&str], f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut sqlx::SqliteConnection,
            ) -> futures_util::future::BoxFuture<'c, Result<T>>
            + Send
            + 'static,
    {
        self.write_tasks_as(task_ids, f, false).await
    }

    /// As [`SqliteStore::write_tasks`], for `f` running one SQL statement.
    async fn write_tasks_statement<T, F>(&self, task_ids: &[&str], f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut sqlx::SqliteConnection,
            ) -> futures_util::future::BoxFuture<'c, Result<T>>
            + Send
            + 'static,
    {
        self.write_tasks_as(task_ids, f, true).await
    }

    async fn write_tasks_as<T, F>(&self, task_ids: &[&str], f: F, one_statement: bool) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut sqlx::SqliteConnection,
            ) -> futures_util::future::BoxFuture<'c, Result<T>>
            + Send
            + 'static,
    {
        let done = if one_statement {
            self.writer.write_statement(f).await
        } else {
            self.writer.write(f).await
        };
        for task_id in task_ids {
            self.cache.invalidate(task_id);
        }
        done
    }

    async fn read_events(&self, task_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT task_id, seq, type, timestamp, body FROM events WHERE task_id = ? AND seq > ? \
             ORDER BY seq LIMIT ?",
        )
        .bind(task_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode::event).collect()
    }
}
