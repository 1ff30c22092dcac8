//! [`RunStore`] on SQLite. One writer connection serialises every write
//! (`writer`), so a claim is a plain `UPDATE … WHERE run_id = (SELECT …)`:
//! no two claims can interleave. Nothing else shares the file, so there is
//! nothing to listen to.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::Row as _;

use super::{SqliteStore, append_events_in, insert_task_in};
use crate::{
    error::Result,
    store::{
        Event, Task,
        decode::json_text,
        runs::{Fence, NewRun, Node, Ring, Run, RunStore, decode_node, decode_run},
        writer::RowQuery,
    },
};

async fn insert_run_in(conn: &mut sqlx::SqliteConnection, r: &NewRun) -> Result<()> {
    let (status, node, attempt, lease) = match &r.claimed_by {
        Some((node, lease)) => ("running", Some(node.as_str()), 1, *lease),
        None => ("queued", None, 0, 0),
    };
    sqlx::query(
        "INSERT INTO runs (run_id, task_id, kind, status, node_id, attempt, lease_until, busy, \
         spec, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&r.run_id)
    .bind(&r.task_id)
    .bind(r.kind.as_str())
    .bind(status)
    .bind(node)
    .bind(attempt)
    .bind(lease)
    .bind(r.busy)
    .bind(r.spec.as_ref().map(Value::to_string))
    .bind(r.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// True while `f`'s run is still held by its node and attempt; binds the
/// fence's three parameters ([`bind_fence`]) in this order.
pub(super) const FENCE_HOLDS: &str = "EXISTS (SELECT 1 FROM runs WHERE run_id = ? AND node_id = ? \
                                      AND attempt = ? AND status = 'running')";

pub(super) fn bind_fence(q: RowQuery, f: &Fence) -> RowQuery {
    q.bind(f.run_id.clone())
        .bind(f.node_id.clone())
        .bind(f.attempt)
}

pub(super) async fn fence_holds(conn: &mut sqlx::SqliteConnection, f: &Fence) -> Result<bool> {
    static SQL: LazyLock<String> = LazyLock::new(|| format!("SELECT {FENCE_HOLDS}"));
    Ok(bind_fence(sqlx::query(SQL.as_str()), f)
        .fetch_one(conn)
        .await?
        .try_get(0)?)
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn register_node(&self, n: &Node) -> Result<()> {
        let n = n.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO nodes (node_id, address, slots, started_at, heartbeat_at) \
                         VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET \
                         address = excluded.address, slots = excluded.slots, \
                         started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
                    )
                    .bind(&n.node_id)
                    .bind(&n.address)
                    .bind(n.slots)
                    .bind(n.started_at)
                    .bind(n.heartbeat_at)
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            })
            .await
    }

    async fn live_nodes(&self, since: i64) -> Result<Vec<Node>> {
        let rows = sqlx::query("SELECT * FROM nodes WHERE heartbeat_at >= ? ORDER BY node_id")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_node).collect()
    }

    async fn node_with_free_slot(&self, live_since: i64, except: &str) -> Result<Option<Node>> {
        let row = sqlx::query(
            "SELECT n.* FROM nodes n WHERE n.heartbeat_at >= ?1 AND n.node_id <> ?2 \
             AND n.slots > (SELECT COUNT(*) FROM runs r WHERE r.node_id = n.node_id \
             AND r.status = 'running' AND r.busy) \
             ORDER BY n.slots - (SELECT COUNT(*) FROM runs r WHERE r.node_id = n.node_id \
             AND r.status = 'running' AND r.busy) DESC, n.node_id LIMIT 1",
        )
        .bind(live_since)
        .bind(except)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_node).transpose()
    }

    async fn insert_run(&self, run: &NewRun, task: Option<&Task>) -> Result<()> {
        let task_id = run.task_id.clone();
        let (run, task) = (run.clone(), task.cloned());
        self.write_tasks(&[&task_id], move |conn| {
            Box::pin(async move {
                if let Some(t) = &task {
                    insert_task_in(conn, t).await?;
                }
                insert_run_in(conn, &run).await
            })
        })
        .await
    }

    async fn queue_run(&self, run: &NewRun, task: &Task, live_since: i64) -> Result<bool> {
        let task_id = run.task_id.clone();
        let (run, task) = (run.clone(), task.clone());
        self.write_tasks(&[&task_id], move |conn| {
            Box::pin(async move {
                let free: i64 = sqlx::query_scalar(
                    "SELECT (SELECT COALESCE(SUM(slots), 0) FROM nodes WHERE heartbeat_at >= ?1) \
                     - (SELECT COUNT(*) FROM runs WHERE status = 'queued' OR (status = 'running' \
                        AND busy AND node_id IN (SELECT node_id FROM nodes WHERE heartbeat_at >= ?1)))",
                )
                .bind(live_since)
                .fetch_one(&mut *conn)
                .await?;
                if free <= 0 {
                    return Ok(false);
                }
                insert_task_in(conn, &task).await?;
                insert_run_in(conn, &run).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn claim_queued_run(
        &self,
        node_id: &str,
        lease_until: i64,
        task_id: Option<&str>,
    ) -> Result<Option<Run>> {
        let (node_id, task_id) = (node_id.to_string(), task_id.map(str::to_string));
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "UPDATE runs SET status = 'running', node_id = ?1, attempt = attempt + 1, \
                         lease_until = ?2, busy = 1 WHERE run_id = (SELECT run_id FROM runs \
                         WHERE status = 'queued' AND (?3 IS NULL OR task_id = ?3) \
                         ORDER BY created_at, run_id LIMIT 1) RETURNING *",
                    )
                    .bind(&node_id)
                    .bind(lease_until)
                    .bind(&task_id)
                    .fetch_optional(conn)
                    .await?;
                    row.as_ref().map(decode_run).transpose()
                })
            })
            .await
    }

    async fn renew_leases(&self, node_id: &str, now: i64, lease_until: i64) -> Result<Vec<Run>> {
        let node_id = node_id.to_string();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query("UPDATE nodes SET heartbeat_at = ? WHERE node_id = ?")
                        .bind(now)
                        .bind(&node_id)
                        .execute(&mut *conn)
                        .await?;
                    let rows = sqlx::query(
                        "UPDATE runs SET lease_until = ? WHERE node_id = ? AND status = 'running' \
                         RETURNING *",
                    )
                    .bind(lease_until)
                    .bind(&node_id)
                    .fetch_all(conn)
                    .await?;
                    rows.iter().map(decode_run).collect()
                })
            })
            .await
    }

    async fn take_over_runs(
        &self,
        node_id: &str,
        now: i64,
        lease_until: i64,
        of_node: Option<&str>,
    ) -> Result<Vec<Run>> {
        let (node_id, of_node) = (node_id.to_string(), of_node.map(str::to_string));
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "UPDATE runs SET node_id = ?1, attempt = attempt + 1, lease_until = ?3 \
                         WHERE status = 'running' AND (lease_until < ?2 OR node_id = ?4) \
                         RETURNING *",
                    )
                    .bind(&node_id)
                    .bind(now)
                    .bind(lease_until)
                    .bind(&of_node)
                    .fetch_all(conn)
                    .await?;
                    rows.iter().map(decode_run).collect()
                })
            })
            .await
    }

    async fn set_run_busy(&self, fence: &Fence, busy: bool) -> Result<bool> {
        let f = fence.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "UPDATE runs SET busy = ? WHERE run_id = ? AND node_id = ? AND attempt = ? \
                         AND status = 'running'",
                    )
                    .bind(busy)
                    .bind(&f.run_id)
                    .bind(&f.node_id)
                    .bind(f.attempt)
                    .execute(conn)
                    .await?;
                    Ok(done.rows_affected() > 0)
                })
            })
            .await
    }

    async fn requeue_run(&self, fence: &Fence) -> Result<bool> {
        let f = fence.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "UPDATE runs SET status = 'queued', node_id = NULL, busy = 0, \
                         lease_until = 0 WHERE run_id = ? AND node_id = ? AND attempt = ? \
                         AND status = 'running'",
                    )
                    .bind(&f.run_id)
                    .bind(&f.node_id)
                    .bind(f.attempt)
                    .execute(conn)
                    .await?;
                    Ok(done.rows_affected() > 0)
                })
            })
            .await
    }

    async fn request_cancel(&self, task_id: Option<&str>, reason: &str) -> Result<Vec<Run>> {
        let (task_id, reason) = (task_id.map(str::to_string), reason.to_string());
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "UPDATE runs SET cancel_reason = COALESCE(cancel_reason, ?1) \
                         WHERE status <> 'done' AND (?2 IS NULL OR task_id = ?2) RETURNING *",
                    )
                    .bind(&reason)
                    .bind(&task_id)
                    .fetch_all(conn)
                    .await?;
                    rows.iter().map(decode_run).collect()
                })
            })
            .await
    }

    async fn active_run(&self, task_id: &str) -> Result<Option<Run>> {
        let row = sqlx::query(
            "SELECT * FROM runs WHERE task_id = ? AND status <> 'done' ORDER BY created_at DESC LIMIT 1",
        )
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_run).transpose()
    }

    async fn append_fenced(
        &self,
        events: &[Arc<Event>],
        task: Option<&Task>,
        fence: &Fence,
        finish: bool,
    ) -> Result<bool> {
        let batch: Vec<(Arc<Event>, String)> = events
            .iter()
            .map(|e| (e.clone(), json_text(&e.body)))
            .collect();
        let (row, fence) = (task.cloned(), fence.clone());
        let mut touched: Vec<&str> = events.iter().map(|e| e.task_id.as_str()).collect();
        touched.extend(task.map(|t| t.task_id.as_str()));
        touched.sort_unstable();
        touched.dedup();
        self.write_tasks(&touched, move |conn| {
            Box::pin(async move {
                if !fence_holds(conn, &fence).await? {
                    return Ok(false);
                }
                append_events_in(conn, &batch, row.as_ref()).await?;
                if finish {
                    sqlx::query("UPDATE runs SET status = 'done', busy = 0 WHERE run_id = ?")
                        .bind(&fence.run_id)
                        .execute(conn)
                        .await?;
                }
                Ok(true)
            })
        })
        .await
    }

    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Ring>>> {
        Ok(None)
    }
}
