//! [`CheckpointStore`] on SQLite: the checkpoint row and the task's usage
//! join their events in the writer's transaction, in one statement trip.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use async_trait::async_trait;
use sqlx::Row as _;

use super::{
    EVENT_ROWS, SqliteStore,
    runs::{FENCE_HOLDS, bind_fence},
};
use crate::store::writer::RowQuery;
use crate::{
    error::Result,
    store::{Checkpoint, CheckpointStore, Event, Fence, TaskUsage, decode::json_text},
};

/// The SQL of one [`CheckpointStore::append_progress`]: the events' INSERT
/// (`rows` rows), the checkpoint's, the usage UPDATE and last
/// `SELECT <the fence holds>`, as one multi-statement query: one trip to
/// sqlx's worker thread instead of one per statement. Fenced, every
/// statement writes only if the fence holds (the writer runs nothing in
/// between, so it holds for all or none of them).
fn progress_sql(rows: usize, checkpoint: bool, usage: bool, fenced: bool) -> &'static str {
    type Key = (usize, bool, bool, bool);
    static SQL: OnceLock<Mutex<HashMap<Key, &'static str>>> = OnceLock::new();
    let key = (rows, checkpoint, usage, fenced);
    let mut known = SQL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // At most (EVENT_ROWS + 1) * 8 texts, so leaking them is bounded.
    known.entry(key).or_insert_with(|| {
        let mut sql = String::new();
        if rows > 0 {
            let values = vec!["(?, ?, ?, ?, ?)"; rows].join(", ");
            sql.push_str("INSERT INTO events (task_id, seq, type, timestamp, body) ");
            if fenced {
                sql.push_str(&format!(
                    "SELECT * FROM (VALUES {values}) WHERE {FENCE_HOLDS}; "
                ));
            } else {
                sql.push_str(&format!("VALUES {values}; "));
            }
        }
        let and_holds = if fenced {
            format!(" AND {FENCE_HOLDS}")
        } else {
            String::new()
        };
        if checkpoint {
            // Not an aggregate over the filtered rows: that yields a row
            // (n = 1) even when the fence filters every one of them.
            let where_holds = if fenced {
                format!(" WHERE {FENCE_HOLDS}")
            } else {
                String::new()
            };
            sql.push_str(&format!(
                "INSERT INTO checkpoints (task_id, n, step, body, created_at) \
                 SELECT ?, (SELECT COALESCE(MAX(n), 0) + 1 FROM checkpoints WHERE task_id = ?), \
                 ?, ?, ?{where_holds}; "
            ));
        }
        if usage {
            sql.push_str(&format!(
                "UPDATE tasks SET input_tokens = ?, output_tokens = ?, cost_usd = ?, \
                 modified_at = ? WHERE task_id = ?{and_holds}; "
            ));
        }
        sql.push_str(if fenced { "SELECT " } else { "SELECT 1" });
        if fenced {
            sql.push_str(FENCE_HOLDS);
        }
        Box::leak(sql.into_boxed_str())
    })
}

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn append_progress(
        &self,
        task_id: &str,
        events: &[Arc<Event>],
        checkpoint: Option<&Checkpoint>,
        usage: Option<&TaskUsage>,
        fence: Option<&Fence>,
    ) -> Result<bool> {
        // Encoded here rather than on the writer's connection, which every
        // write waits for.
        let batch: Vec<(Arc<Event>, String)> = events
            .iter()
            .map(|e| (e.clone(), json_text(&e.body)))
            .collect();
        let id = task_id.to_string();
        let (cp, usage, fence) = (checkpoint.cloned(), usage.copied(), fence.cloned());
        let mut touched: Vec<&str> = events.iter().map(|e| e.task_id.as_str()).collect();
        touched.push(task_id);
        touched.sort_unstable();
        touched.dedup();
        self.write_tasks(&touched, move |conn| {
            Box::pin(async move {
                let fenced = fence.is_some();
                let guard = |q: RowQuery| match &fence {
                    Some(f) => bind_fence(q, f),
                    None => q,
                };
                // Owned values are moved into the query, not copied again.
                let (mut events, mut cp, mut usage) = (batch.into_iter(), cp, usage);
                loop {
                    let chunk: Vec<(Arc<Event>, String)> =
                        events.by_ref().take(EVENT_ROWS).collect();
                    let last = events.len() == 0;
                    let (with_cp, with_usage) = (last && cp.is_some(), last && usage.is_some());
                    let mut q = sqlx::query(progress_sql(chunk.len(), with_cp, with_usage, fenced));
                    let rows = chunk.len();
                    for (e, body) in chunk {
                        q = q
                            .bind(e.task_id.clone())
                            .bind(e.seq)
                            .bind(e.kind.clone())
                            .bind(e.timestamp)
                            .bind(body);
                    }
                    if rows > 0 {
                        q = guard(q);
                    }
                    if with_cp && let Some(cp) = cp.take() {
                        q = q
                            .bind(id.clone())
                            .bind(id.clone())
                            .bind(cp.step)
                            .bind(cp.body)
                            .bind(cp.created_at);
                        q = guard(q);
                    }
                    if with_usage && let Some(u) = usage.take() {
                        q = q
                            .bind(u.input_tokens)
                            .bind(u.output_tokens)
                            .bind(u.cost_usd)
                            .bind(u.modified_at)
                            .bind(id.clone());
                        q = guard(q);
                    }
                    let held: bool = guard(q).fetch_one(&mut *conn).await?.try_get(0)?;
                    if !held {
                        return Ok(false);
                    }
                    if last {
                        return Ok(true);
                    }
                }
            })
        })
        .await
    }

    async fn checkpoints(&self, task_id: &str) -> Result<Vec<Checkpoint>> {
        let rows: Vec<(String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT task_id, n, step, body, created_at FROM checkpoints WHERE task_id = ? \
             ORDER BY n",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(checkpoint_of).collect())
    }

    async fn request_stop(&self, task_id: &str, reason: &str, at: i64) -> Result<()> {
        let (id, reason) = (task_id.to_string(), reason.to_string());
        self.write_tasks_statement(&[task_id], move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO stop_requests (task_id, reason, created_at) VALUES (?, ?, ?) \
                     ON CONFLICT (task_id) DO NOTHING",
                )
                .bind(&id)
                .bind(&reason)
                .bind(at)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn stop_request(&self, task_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT reason FROM stop_requests WHERE task_id = ?")
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

fn checkpoint_of(
    (task_id, n, step, body, created_at): (String, i64, i64, String, i64),
) -> Checkpoint {
    Checkpoint {
        task_id,
        n,
        step,
        body,
        created_at,
    }
}
