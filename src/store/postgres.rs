//! The PostgreSQL store (`--database-url postgres://…`): the same rows and
//! contract as the SQLite store, in a database several agentd nodes can
//! share.
//!
//! Durability: every write is one transaction on a pooled connection, and its
//! caller is answered after COMMIT returned. Each connection makes sure
//! `synchronous_commit` is not `off`, so a commit that returned is flushed to
//! the WAL; PostgreSQL batches the flushes of concurrent commits itself (its
//! own group commit). Creates, the one write that comes in floods, are also
//! batched by the node: many in one INSERT and one transaction
//! (`creates.rs`).
//!
//! Caching: none for task rows, artifact lists or open event logs: with
//! several nodes, another node's write would leave a node-local copy stale.
//! Only logs that end with `end` are cached: a finished task takes no more
//! events, so such a log never changes (a deleted task's cached log is only
//! unreachable: readers look the task up first).

use std::{borrow::Cow, collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use async_trait::async_trait;
use serde_json::Value;
use sqlx::{
    Connection as _, Executor as _, PgConnection, PgPool, Row as _, postgres::PgPoolOptions,
};

use super::{
    Artifact, DatabaseUrl, Event, Step, Store, Task, TaskQuery, TaskStatus, Totals,
    cache::ReadCache,
    decode::{self, json_text},
};
use crate::{
    error::{Error, Resource, Result},
    tasks::EventKind,
};

/// Connections per node: reads and writes share them. Several nodes share the
/// server's `max_connections` (100 by default).
const MAX_CONNECTIONS: u32 = 10;
/// How long the first connection may take before start-up gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

mod checkpoints;
mod creates;
mod runs;

pub struct PgStore {
    pool: PgPool,
    /// For the one listening connection (`runs::listen`), outside the pool.
    options: sqlx::postgres::PgConnectOptions,
    /// Finished tasks' event logs only (see the module comment).
    finished_logs: ReadCache,
    /// Task inserts, group-committed (`creates.rs`).
    creates: creates::Creates,
}

impl PgStore {
    /// Connects, checks the server answers, and applies migrations (under
    /// PostgreSQL's advisory lock, so nodes starting together migrate once).
    pub async fn connect(url: &DatabaseUrl, cache_bytes: u64) -> anyhow::Result<Self> {
        let options = url.connect_options().clone().application_name("agentd");
        // One connection first: a wrong URL, password or an unreachable server
        // fails here with its reason (the pool would retry a refused
        // connection until its acquire timeout and report only that).
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
            .and_then(|c| c.map_err(anyhow::Error::new))
            .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
        probe.close().await.ok();
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // An acknowledged write must be committed: turn an `off`
                    // (server or role default) up for this session; `on`,
                    // `local` and the remote levels are already durable here.
                    conn.execute(
                        "SELECT set_config('synchronous_commit', 'on', false) \
                         WHERE current_setting('synchronous_commit') = 'off'",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
        sqlx::migrate!("src/store/migrations/postgres")
            .run(&pool)
            .await
            .with_context(|| format!("applying database migrations to {url}"))?;
        Ok(Self {
            creates: creates::Creates::start(pool.clone()),
            pool,
            options,
            finished_logs: ReadCache::new(cache_bytes),
        })
    }
}

/// PostgreSQL text cannot hold U+0000 (SQLite's can): a NUL in free text (a
/// task's input, a model's result) becomes U+FFFD rather than failing the
/// write. JSON columns need nothing: serde_json writes it as `\u0000`.
fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn pg_opt_text(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(pg_text)
}

async fn update_task_in(conn: &mut PgConnection, t: &Task) -> Result<()> {
    sqlx::query(
        "UPDATE tasks SET status = $1, run_spec = $2, modified_at = $3, started_at = $4, \
         finished_at = $5, result = $6, error = $7, input_tokens = $8, output_tokens = $9, \
         cost_usd = $10 WHERE task_id = $11",
    )
    .bind(t.status.as_str())
    .bind(t.run_spec.as_ref().map(Value::to_string))
    .bind(t.modified_at)
    .bind(t.started_at)
    .bind(t.finished_at)
    .bind(pg_opt_text(&t.result))
    .bind(pg_opt_text(&t.error))
    .bind(t.input_tokens)
    .bind(t.output_tokens)
    .bind(t.cost_usd)
    .bind(&t.task_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The seqs `events` take in each task's log: (first, last) by task id, in id
/// order (the order their rows are locked in). Each task's events must be
/// consecutive.
fn seq_ranges(events: &[Arc<Event>]) -> Result<BTreeMap<&str, (i64, i64)>> {
    let mut ranges: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for e in events {
        match ranges.get_mut(e.task_id.as_str()) {
            None => {
                ranges.insert(&e.task_id, (e.seq, e.seq));
            }
            Some((_, last)) if e.seq == *last + 1 => *last = e.seq,
            Some((_, last)) => {
                return Err(anyhow::anyhow!(
                    "event seq {} of task {} does not follow seq {last}",
                    e.seq,
                    e.task_id
                )
                .into());
            }
        }
    }
    Ok(ranges)
}

/// The events (and the task row) in the caller's transaction. Each log's
/// counter on the task row is advanced, checking the events follow what is
/// stored: the row lock makes a concurrent writer of the same task wait for
/// this commit, and a writer whose seqs are stale (another node wrote
/// meanwhile) fails instead of leaving a gap or a fork.
pub(super) async fn append_in(
    conn: &mut PgConnection,
    events: &[Arc<Event>],
    task: Option<&Task>,
) -> Result<()> {
    let ranges = seq_ranges(events)?;
    for (task_id, (first, last)) in &ranges {
        let moved =
            sqlx::query("UPDATE tasks SET last_seq = $3 WHERE task_id = $1 AND last_seq = $2")
                .bind(task_id)
                .bind(first - 1)
                .bind(last)
                .execute(&mut *conn)
                .await?;
        if moved.rows_affected() == 0 {
            let stored: Option<i64> =
                sqlx::query_scalar("SELECT last_seq FROM tasks WHERE task_id = $1")
                    .bind(task_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            return Err(match stored {
                None => Error::not_found(Resource::Task, *task_id),
                Some(stored) => anyhow::anyhow!(
                    "events {first}..={last} of task {task_id} do not follow its log \
                     (last seq {stored})"
                )
                .into(),
            });
        }
    }
    if !events.is_empty() {
        // One statement for the whole batch, whatever its size.
        let column = |f: fn(&Event) -> String| events.iter().map(|e| f(e)).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO events (task_id, seq, type, timestamp, body) \
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[])",
        )
        .bind(column(|e| e.task_id.clone()))
        .bind(events.iter().map(|e| e.seq).collect::<Vec<_>>())
        .bind(column(|e| e.kind.clone()))
        .bind(events.iter().map(|e| e.timestamp).collect::<Vec<_>>())
        .bind(column(|e| json_text(&e.body)))
        .execute(&mut *conn)
        .await?;
    }
    if let Some(t) = task {
        update_task_in(conn, t).await?;
    }
    Ok(())
}

/// One page of tasks: the ids from the listing index, then their rows.
macro_rules! page_of_tasks {
    ($filter:literal, $limit:literal, $offset:literal) => {
        concat!(
            "SELECT t.* FROM tasks t JOIN (SELECT task_id FROM tasks ",
            $filter,
            " ORDER BY created_at, task_id LIMIT ",
            $limit,
            " OFFSET ",
            $offset,
            ") page USING (task_id) ORDER BY t.created_at, t.task_id"
        )
    };
}

#[async_trait]
impl Store for PgStore {
    async fn insert_task(&self, t: &Task) -> Result<()> {
        self.creates.insert(t).await
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<Task>> {
        let row = sqlx::query("SELECT * FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::task).transpose()
    }

    async fn update_task(&self, t: &Task) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        update_task_in(&mut conn, t).await
    }

    async fn set_usage(
        &self,
        task_id: &str,
        input_tokens: i64,
        output_tokens: i64,
        cost_usd: f64,
        modified_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET input_tokens = $1, output_tokens = $2, cost_usd = $3, \
             modified_at = $4 WHERE task_id = $5",
        )
        .bind(input_tokens)
        .bind(output_tokens)
        .bind(cost_usd)
        .bind(modified_at)
        .bind(task_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<(Vec<Task>, i64)> {
        // One statement per filter combination, so each plan uses its index
        // (`$1 IS NULL OR …` defeats them). The page is picked from the index
        // alone (task_id is in it) and only its rows are read; counts without
        // a time filter come from `task_counts`.
        let status = q.status.map(TaskStatus::as_str);
        if let Some(owner) = &q.owner {
            return self.list_tasks_of(owner, status, q).await;
        }
        let (count_sql, page_sql) = match (status, q.created_after) {
            (None, None) => (
                "SELECT COALESCE(SUM(n), 0)::BIGINT FROM task_counts",
                page_of_tasks!("", "$1", "$2"),
            ),
            (Some(_), None) => (
                "SELECT COALESCE(SUM(n), 0)::BIGINT FROM task_counts WHERE status = $1",
                page_of_tasks!("WHERE status = $1", "$2", "$3"),
            ),
            (None, Some(_)) => (
                "SELECT COUNT(*) FROM tasks WHERE created_at > $1",
                page_of_tasks!("WHERE created_at > $1", "$2", "$3"),
            ),
            (Some(_), Some(_)) => (
                "SELECT COUNT(*) FROM tasks WHERE status = $1 AND created_at > $2",
                page_of_tasks!("WHERE status = $1 AND created_at > $2", "$3", "$4"),
            ),
        };
        let mut count = sqlx::query_scalar::<_, i64>(count_sql);
        let mut page = sqlx::query(page_sql);
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
            .bind(q.limit.max(0))
            .bind(q.offset.max(0))
            .fetch_all(&self.pool)
            .await?;
        let tasks = rows.iter().map(decode::task).collect::<Result<_>>()?;
        Ok((tasks, total))
    }

    async fn delete_task(&self, task_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .execute(&self.pool)
            .await;
        self.finished_logs.invalidate(task_id);
        Ok(done?.rows_affected() > 0)
    }

    async fn totals(&self) -> Result<Totals> {
        let rows = sqlx::query(
            "SELECT status, SUM(n)::BIGINT AS n, SUM(input_tokens)::BIGINT AS input_tokens, \
             SUM(output_tokens)::BIGINT AS output_tokens, SUM(cost_usd) AS cost_usd \
             FROM task_counts GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        decode::totals(&rows)
    }

    async fn totals_of(&self, owner: &str) -> Result<Totals> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*)::BIGINT AS n, SUM(input_tokens)::BIGINT AS input_tokens, \
             SUM(output_tokens)::BIGINT AS output_tokens, SUM(cost_usd) AS cost_usd \
             FROM tasks WHERE owner = $1 GROUP BY status ORDER BY status",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        decode::totals(&rows)
    }

    async fn save_step(&self, s: &Step) -> Result<()> {
        // An update keeps the step's artifact links (a delete and insert would
        // cascade them away).
        sqlx::query(
            "INSERT INTO steps (step_id, task_id, number, name, status, state, input, \
             additional_input, output, additional_output, is_last, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (step_id) DO UPDATE SET number = EXCLUDED.number, name = EXCLUDED.name, \
             status = EXCLUDED.status, state = EXCLUDED.state, input = EXCLUDED.input, \
             additional_input = EXCLUDED.additional_input, output = EXCLUDED.output, \
             additional_output = EXCLUDED.additional_output, is_last = EXCLUDED.is_last, \
             created_at = EXCLUDED.created_at",
        )
        .bind(&s.step_id)
        .bind(&s.task_id)
        .bind(s.number)
        .bind(pg_text(&s.name))
        .bind(pg_text(&s.status))
        .bind(pg_text(&s.state))
        .bind(pg_text(&s.input))
        .bind(json_text(&s.additional_input))
        .bind(pg_text(&s.output))
        .bind(json_text(&s.additional_output))
        .bind(s.is_last)
        .bind(s.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_step(&self, task_id: &str, step_id: &str) -> Result<Option<Step>> {
        let row = sqlx::query("SELECT * FROM steps WHERE task_id = $1 AND step_id = $2")
            .bind(task_id)
            .bind(step_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::step).transpose()
    }

    async fn list_steps(&self, task_id: &str, offset: i64, limit: i64) -> Result<(Vec<Step>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM steps WHERE task_id = $1")
            .bind(task_id)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT * FROM steps WHERE task_id = $1 ORDER BY number LIMIT $2 OFFSET $3",
        )
        .bind(task_id)
        .bind(limit.max(0))
        .bind(offset.max(0))
        .fetch_all(&self.pool)
        .await?;
        let steps = rows.iter().map(decode::step).collect::<Result<_>>()?;
        Ok((steps, total))
    }

    async fn upsert_artifact(&self, a: &Artifact, step_id: Option<&str>) -> Result<Artifact> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO artifacts (artifact_id, task_id, step_id, file_name, relative_path, \
             location, file_size, agent_created, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (task_id, location) DO UPDATE SET file_name = EXCLUDED.file_name, \
             relative_path = EXCLUDED.relative_path, file_size = EXCLUDED.file_size, \
             agent_created = EXCLUDED.agent_created RETURNING *",
        )
        .bind(&a.artifact_id)
        .bind(&a.task_id)
        .bind(&a.step_id)
        .bind(pg_text(&a.file_name))
        .bind(pg_text(&a.relative_path))
        .bind(pg_text(&a.location))
        .bind(a.file_size)
        .bind(a.agent_created)
        .bind(a.created_at)
        .fetch_one(&mut *tx)
        .await?;
        let stored = decode::artifact(&row)?;
        if let Some(step_id) = step_id {
            sqlx::query(
                "INSERT INTO step_artifacts (step_id, artifact_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
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
        let rows = sqlx::query(
            "SELECT s.step_id AS linked_step, a.* FROM step_artifacts s \
             JOIN artifacts a ON a.artifact_id = s.artifact_id \
             WHERE s.step_id = ANY($1) ORDER BY a.created_at, a.artifact_id",
        )
        .bind(step_ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("linked_step")?, decode::artifact(r)?)))
            .collect()
    }

    async fn get_artifact(&self, task_id: &str, artifact_id: &str) -> Result<Option<Artifact>> {
        let row = sqlx::query("SELECT * FROM artifacts WHERE task_id = $1 AND artifact_id = $2")
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
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM artifacts WHERE task_id = $1")
            .bind(task_id)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT * FROM artifacts WHERE task_id = $1 ORDER BY created_at, artifact_id \
             LIMIT $2 OFFSET $3",
        )
        .bind(task_id)
        .bind(limit.max(0))
        .bind(offset.max(0))
        .fetch_all(&self.pool)
        .await?;
        let artifacts = rows.iter().map(decode::artifact).collect::<Result<_>>()?;
        Ok((artifacts, total))
    }

    async fn artifacts_of(&self, task_ids: &[String]) -> Result<Vec<Artifact>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT * FROM artifacts WHERE task_id = ANY($1) ORDER BY created_at, artifact_id",
        )
        .bind(task_ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode::artifact).collect()
    }

    async fn delete_artifact(&self, task_id: &str, artifact_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM artifacts WHERE task_id = $1 AND artifact_id = $2")
            .bind(task_id)
            .bind(artifact_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn append_events(&self, events: &[Arc<Event>], task: Option<&Task>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let appended = append_in(&mut tx, events, task).await;
        let committed = match appended {
            Ok(()) => tx.commit().await.map_err(Error::from),
            Err(e) => Err(e),
        };
        if committed.is_ok() {
            self.after_append(events).await;
        }
        committed
    }

    async fn last_event_seq(&self, task_id: &str) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn list_events(&self, task_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Event>> {
        if let Some(log) = self.finished_logs.events(task_id) {
            let from = log.partition_point(|e| e.seq <= after_seq);
            let limit = usize::try_from(limit).unwrap_or(0);
            return Ok(log[from..].iter().take(limit).cloned().collect());
        }
        self.read_events(task_id, after_seq, limit).await
    }

    async fn event_log(&self, task_id: &str) -> Result<Arc<Vec<Event>>> {
        if let Some(log) = self.finished_logs.events(task_id) {
            return Ok(log);
        }
        let stamp = self.finished_logs.stamp(task_id);
        let log = Arc::new(self.read_events(task_id, 0, i64::MAX).await?);
        if log
            .last()
            .is_some_and(|e| e.kind == EventKind::End.as_str())
        {
            self.finished_logs.fill_events(task_id, stamp, log.clone());
        }
        Ok(log)
    }
}

impl PgStore {
    /// One owner's page of tasks (`list_tasks` with `owner`), counted from
    /// the owner's index (the counters are for all tasks).
    async fn list_tasks_of(
        &self,
        owner: &str,
        status: Option<&str>,
        q: &TaskQuery,
    ) -> Result<(Vec<Task>, i64)> {
        let mut filter = String::from("WHERE owner = $1");
        let mut n = 1;
        if status.is_some() {
            n += 1;
            filter.push_str(&format!(" AND status = ${n}"));
        }
        if q.created_after.is_some() {
            n += 1;
            filter.push_str(&format!(" AND created_at > ${n}"));
        }
        let count_sql = format!("SELECT COUNT(*) FROM tasks {filter}");
        let page_sql = format!(
            "SELECT t.* FROM tasks t JOIN (SELECT task_id FROM tasks {filter} \
             ORDER BY created_at, task_id LIMIT ${} OFFSET ${}) page USING (task_id) \
             ORDER BY t.created_at, t.task_id",
            n + 1,
            n + 2
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
            .bind(q.limit.max(0))
            .bind(q.offset.max(0))
            .fetch_all(&self.pool)
            .await?;
        let tasks = rows.iter().map(decode::task).collect::<Result<_>>()?;
        Ok((tasks, total))
    }
}

impl PgStore {
    /// After an append, committed or not: cached finished logs of its tasks
    /// are dropped (nothing appends after `end`; this is only for safety),
    /// and other nodes' followers are rung, once per task and batch, after
    /// the commit (a NOTIFY inside the transaction would serialise commits).
    pub(super) async fn after_append(&self, events: &[Arc<Event>]) {
        let Ok(ranges) = seq_ranges(events) else {
            return;
        };
        for task_id in ranges.keys() {
            self.finished_logs.invalidate(task_id);
        }
        let payloads: Vec<String> = ranges
            .iter()
            .map(|(task_id, (first, last))| format!("{first} {last} {task_id}"))
            .collect();
        if payloads.is_empty() {
            return;
        }
        let rung = sqlx::query("SELECT pg_notify('agentd_events', p) FROM UNNEST($1::TEXT[]) p")
            .bind(payloads)
            .execute(&self.pool)
            .await;
        if let Err(e) = rung {
            // A lost ring costs latency only: followers poll as a last resort.
            tracing::debug!(error = %e, "could not ring the event doorbell");
        }
    }

    async fn read_events(&self, task_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT task_id, seq, type, timestamp, body FROM events \
             WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(task_id)
        .bind(after_seq)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode::event).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    };

    use serde_json::Map;

    use super::*;
    use crate::store::{Origin, test_cluster};

    fn task(id: &str) -> Task {
        Task::new(
            id.into(),
            "input".into(),
            Map::new(),
            Origin::AgentProtocol,
            1,
        )
    }

    fn event(task_id: &str, seq: i64) -> Arc<Event> {
        Arc::new(Event {
            task_id: task_id.into(),
            seq,
            kind: "step".into(),
            timestamp: seq,
            body: Map::new(),
        })
    }

    async fn fresh_store() -> Option<PgStore> {
        let url = test_cluster::shared()?.fresh_database().await;
        Some(
            PgStore::connect(&DatabaseUrl::parse(&url).unwrap(), 0)
                .await
                .unwrap(),
        )
    }

    /// The task row's counter makes the log gap-free: a batch that does not
    /// start right after the stored log (a stale writer) fails whole.
    #[tokio::test]
    async fn appends_must_follow_the_stored_log() {
        let Some(store) = fresh_store().await else {
            return;
        };
        store.insert_task(&task("t1")).await.unwrap();
        store
            .append_events(&[event("t1", 1), event("t1", 2)], None)
            .await
            .unwrap();
        for stale in [vec![event("t1", 4)], vec![event("t1", 2), event("t1", 3)]] {
            let e = store.append_events(&stale, None).await.unwrap_err();
            assert!(e.to_string().contains("do not follow"), "{e}");
        }
        let gap = [event("t1", 3), event("t1", 5)];
        assert!(store.append_events(&gap, None).await.is_err());
        assert_eq!(store.last_event_seq("t1").await.unwrap(), 2);
        assert_eq!(store.read_events("t1", 0, 10).await.unwrap().len(), 2);
        let missing = store.append_events(&[event("nope", 1)], None).await;
        assert!(
            matches!(missing, Err(Error::NotFound { .. })),
            "{missing:?}"
        );
    }

    /// A server that is not there stops start-up at once, with where it was
    /// looked for and why, and without the password.
    #[tokio::test]
    async fn an_unreachable_server_fails_at_start_with_a_clear_message() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = DatabaseUrl::parse(&format!("postgres://agentd:pw-s3cret@127.0.0.1:{port}/db"))
            .unwrap();
        let began = std::time::Instant::now();
        let e = format!("{:#}", PgStore::connect(&url, 0).await.err().unwrap());
        assert!(
            began.elapsed() < CONNECT_TIMEOUT,
            "took {:?}",
            began.elapsed()
        );
        assert!(
            e.contains(&format!(
                "connecting to PostgreSQL at postgres://agentd@127.0.0.1:{port}/db"
            )),
            "{e}"
        );
        assert!(e.to_lowercase().contains("refused"), "{e}");
        assert!(!e.contains("pw-s3cret"), "{e}");
    }

    /// Writers keep writing while the server crashes (`pg_ctl stop -m
    /// immediate`: no checkpoint, WAL replay at the next start) and comes
    /// back: every write that was acknowledged is there afterwards. The
    /// server runs with fsync on and `synchronous_commit = off` as its
    /// default, which the store must turn back on for its sessions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_writes_survive_a_server_crash() {
        if !test_cluster::available() {
            return;
        }
        let cluster = Arc::new(test_cluster::Cluster::start(&["synchronous_commit=off"]));
        let url = DatabaseUrl::parse(&cluster.url("postgres")).unwrap();
        let store = Arc::new(PgStore::connect(&url, 0).await.unwrap());
        let level: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(level, "on");
        store.insert_task(&task("log")).await.unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let acked_seq = Arc::new(AtomicI64::new(0));
        let failed = Arc::new(AtomicI64::new(0));
        let mut writers = Vec::new();
        for w in 0..4 {
            let (store, stop, acked, failed) =
                (store.clone(), stop.clone(), acked.clone(), failed.clone());
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("w{w}-{i}");
                    match store.insert_task(&task(&id)).await {
                        Ok(()) => acked.lock().unwrap().push(id),
                        Err(_) => _ = failed.fetch_add(1, Ordering::Relaxed),
                    }
                }
            }));
        }
        {
            let (store, stop, acked_seq, failed) = (
                store.clone(),
                stop.clone(),
                acked_seq.clone(),
                failed.clone(),
            );
            writers.push(tokio::spawn(async move {
                let mut seq = 1;
                while !stop.load(Ordering::Relaxed) {
                    match store.append_events(&[event("log", seq)], None).await {
                        Ok(()) => {
                            acked_seq.store(seq, Ordering::Relaxed);
                            seq += 1;
                        }
                        // A commit whose answer was lost may have committed:
                        // go on from what is stored.
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(last) = store.last_event_seq("log").await {
                                seq = last + 1;
                            }
                        }
                    }
                }
            }));
        }
        let wait_for = |n: usize| {
            let acked = acked.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while acked.lock().unwrap().len() < n {
                    assert!(std::time::Instant::now() < deadline, "writes stalled");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait_for(300).await;
        let crash = cluster.clone();
        tokio::task::spawn_blocking(move || {
            crash.crash();
            crash.restart();
        })
        .await
        .unwrap();
        let before = acked.lock().unwrap().len();
        wait_for(before + 100).await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        drop(store);

        let store = PgStore::connect(&url, 0).await.unwrap();
        let acked = acked.lock().unwrap().clone();
        let stored: Vec<String> = sqlx::query_scalar("SELECT task_id FROM tasks")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        let stored: std::collections::HashSet<String> = stored.into_iter().collect();
        let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged tasks lost: {lost:?}",
            lost.len(),
            acked.len()
        );
        let seq = acked_seq.load(Ordering::Relaxed);
        let log = store.read_events("log", 0, i64::MAX).await.unwrap();
        assert!(
            log.len() as i64 >= seq,
            "log has {} events, {seq} acknowledged",
            log.len()
        );
        assert!(
            log.iter().enumerate().all(|(i, e)| e.seq == i as i64 + 1),
            "gap in the log"
        );
        eprintln!(
            "crash test: {} tasks and {seq} events acknowledged, {} writes failed around the crash",
            acked.len(),
            failed.load(Ordering::Relaxed)
        );
    }
}
