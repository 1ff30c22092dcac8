//! [`RunStore`] on PostgreSQL, the engine several nodes share: claims take
//! rows with `FOR UPDATE SKIP LOCKED` (concurrent claimers never get the same
//! row and never wait for each other), every holder's write checks its fence
//! under the run row's lock, and notifications are rung after commit on
//! three channels that one listening connection per node follows.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{PgConnection, postgres::PgListener};
use tokio::sync::mpsc;

use super::{PgStore, append_in, pg_text};
use crate::{
    error::Result,
    store::{
        Event, Task,
        decode::json_text,
        runs::{Fence, NewRun, Node, Ring, Run, RunStore, decode_node, decode_run},
    },
};

const EVENTS: &str = "agentd_events";
const RUNS: &str = "agentd_runs";
const CANCEL: &str = "agentd_cancel";
/// Serialises the cluster-wide slot count with the queueing it decides.
const ADMISSION_LOCK: i64 = 0x6167_656e_7464; // "agentd"
/// Rings buffered for the task layer; past this, rings are dropped (it reads
/// the tables anyway, see `Ring::Reconnected`).
const RING_BUFFER: usize = 4096;

async fn insert_run_in(conn: &mut PgConnection, r: &NewRun) -> Result<()> {
    let (status, node, attempt, lease) = match &r.claimed_by {
        Some((node, lease)) => ("running", Some(node.as_str()), 1_i64, *lease),
        None => ("queued", None, 0, 0),
    };
    sqlx::query(
        "INSERT INTO runs (run_id, task_id, kind, status, node_id, attempt, lease_until, busy, \
         spec, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&r.run_id)
    .bind(&r.task_id)
    .bind(r.kind.as_str())
    .bind(status)
    .bind(node)
    .bind(attempt)
    .bind(lease)
    .bind(r.busy)
    .bind(
        r.spec
            .as_ref()
            .map(|v| pg_text(&v.to_string()).into_owned()),
    )
    .bind(r.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The task row (the store's `insert_task`, and with a run in one transaction).
pub(super) async fn insert_task_in(conn: &mut PgConnection, t: &Task) -> Result<()> {
    sqlx::query(
        "INSERT INTO tasks (task_id, input, additional_input, status, origin, run_spec, \
         created_at, modified_at, started_at, finished_at, result, error, input_tokens, \
         output_tokens, cost_usd, owner) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(&t.task_id)
    .bind(pg_text(&t.input))
    .bind(json_text(&t.additional_input))
    .bind(t.status.as_str())
    .bind(t.origin.as_str())
    .bind(t.run_spec.as_ref().map(Value::to_string))
    .bind(t.created_at)
    .bind(t.modified_at)
    .bind(t.started_at)
    .bind(t.finished_at)
    .bind(t.result.as_deref().map(pg_text))
    .bind(t.error.as_deref().map(pg_text))
    .bind(t.input_tokens)
    .bind(t.output_tokens)
    .bind(t.cost_usd)
    .bind(&t.owner)
    .execute(conn)
    .await?;
    Ok(())
}

impl PgStore {
    async fn ring(&self, channel: &str, payload: &str) {
        let rung = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await;
        if let Err(e) = rung {
            tracing::debug!(error = %e, channel, "could not ring");
        }
    }
}

/// Whether `f` still holds its run, locking the run row until the end of
/// the transaction: that orders the write against a take-over of the run
/// (whichever commits second sees the other's attempt or status).
pub(super) async fn fence_holds(conn: &mut PgConnection, f: &Fence) -> Result<bool> {
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM runs WHERE run_id = $1 AND node_id = $2 AND attempt = $3 \
         AND status = 'running' FOR UPDATE",
    )
    .bind(&f.run_id)
    .bind(&f.node_id)
    .bind(f.attempt)
    .fetch_optional(conn)
    .await?;
    Ok(held.is_some())
}

#[async_trait]
impl RunStore for PgStore {
    async fn register_node(&self, n: &Node) -> Result<()> {
        sqlx::query(
            "INSERT INTO nodes (node_id, address, slots, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (node_id) DO UPDATE SET \
             address = EXCLUDED.address, slots = EXCLUDED.slots, \
             started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at",
        )
        .bind(&n.node_id)
        .bind(&n.address)
        .bind(n.slots)
        .bind(n.started_at)
        .bind(n.heartbeat_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn live_nodes(&self, since: i64) -> Result<Vec<Node>> {
        let rows = sqlx::query("SELECT * FROM nodes WHERE heartbeat_at >= $1 ORDER BY node_id")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_node).collect()
    }

    async fn node_with_free_slot(&self, live_since: i64, except: &str) -> Result<Option<Node>> {
        let row = sqlx::query(
            "SELECT n.* FROM nodes n WHERE n.heartbeat_at >= $1 AND n.node_id <> $2 \
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
        let mut tx = self.pool.begin().await?;
        if let Some(t) = task {
            insert_task_in(&mut tx, t).await?;
        }
        insert_run_in(&mut tx, run).await?;
        tx.commit().await?;
        if run.claimed_by.is_none() {
            self.ring(RUNS, &run.run_id).await;
        }
        Ok(())
    }

    async fn queue_run(&self, run: &NewRun, task: &Task, live_since: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // Two nodes counting at once would both see the last free slot.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ADMISSION_LOCK)
            .execute(&mut *tx)
            .await?;
        let free: i64 = sqlx::query_scalar(
            "SELECT (SELECT COALESCE(SUM(slots), 0) FROM nodes WHERE heartbeat_at >= $1)::BIGINT \
             - (SELECT COUNT(*) FROM runs WHERE status = 'queued' OR (status = 'running' AND busy \
                AND node_id IN (SELECT node_id FROM nodes WHERE heartbeat_at >= $1)))",
        )
        .bind(live_since)
        .fetch_one(&mut *tx)
        .await?;
        if free <= 0 {
            return Ok(false);
        }
        insert_task_in(&mut tx, task).await?;
        insert_run_in(&mut tx, run).await?;
        tx.commit().await?;
        self.ring(RUNS, &run.run_id).await;
        Ok(true)
    }

    async fn claim_queued_run(
        &self,
        node_id: &str,
        lease_until: i64,
        task_id: Option<&str>,
    ) -> Result<Option<Run>> {
        let row = sqlx::query(
            "UPDATE runs SET status = 'running', node_id = $1, attempt = attempt + 1, \
             lease_until = $2, busy = TRUE WHERE run_id = (SELECT run_id FROM runs \
             WHERE status = 'queued' AND ($3::TEXT IS NULL OR task_id = $3) \
             ORDER BY created_at, run_id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *",
        )
        .bind(node_id)
        .bind(lease_until)
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_run).transpose()
    }

    async fn renew_leases(&self, node_id: &str, now: i64, lease_until: i64) -> Result<Vec<Run>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE nodes SET heartbeat_at = $2 WHERE node_id = $1")
            .bind(node_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "UPDATE runs SET lease_until = $2 WHERE node_id = $1 AND status = 'running' RETURNING *",
        )
        .bind(node_id)
        .bind(lease_until)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(decode_run).collect()
    }

    async fn take_over_runs(
        &self,
        node_id: &str,
        now: i64,
        lease_until: i64,
        of_node: Option<&str>,
    ) -> Result<Vec<Run>> {
        let rows = sqlx::query(
            "UPDATE runs SET node_id = $1, attempt = attempt + 1, lease_until = $3 \
             WHERE run_id IN (SELECT run_id FROM runs WHERE status = 'running' \
             AND (lease_until < $2 OR node_id = $4) FOR UPDATE SKIP LOCKED) RETURNING *",
        )
        .bind(node_id)
        .bind(now)
        .bind(lease_until)
        .bind(of_node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_run).collect()
    }

    async fn requeue_run(&self, f: &Fence) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET status = 'queued', node_id = NULL, busy = FALSE, lease_until = 0 \
             WHERE run_id = $1 AND node_id = $2 AND attempt = $3 AND status = 'running'",
        )
        .bind(&f.run_id)
        .bind(&f.node_id)
        .bind(f.attempt)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_run_busy(&self, f: &Fence, busy: bool) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET busy = $1 WHERE run_id = $2 AND node_id = $3 AND attempt = $4 \
             AND status = 'running'",
        )
        .bind(busy)
        .bind(&f.run_id)
        .bind(&f.node_id)
        .bind(f.attempt)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn request_cancel(&self, task_id: Option<&str>, reason: &str) -> Result<Vec<Run>> {
        let rows = sqlx::query(
            "UPDATE runs SET cancel_reason = COALESCE(cancel_reason, $1) \
             WHERE status <> 'done' AND ($2::TEXT IS NULL OR task_id = $2) RETURNING *",
        )
        .bind(reason)
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        let runs: Vec<Run> = rows.iter().map(decode_run).collect::<Result<_>>()?;
        for run in &runs {
            let reason = run.cancel_reason.as_deref().unwrap_or(reason);
            self.ring(CANCEL, &format!("{reason} {}", run.task_id))
                .await;
        }
        Ok(runs)
    }

    async fn active_run(&self, task_id: &str) -> Result<Option<Run>> {
        let row = sqlx::query(
            "SELECT * FROM runs WHERE task_id = $1 AND status <> 'done' \
             ORDER BY created_at DESC LIMIT 1",
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
        f: &Fence,
        finish: bool,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if !fence_holds(&mut tx, f).await? {
            return Ok(false);
        }
        append_in(&mut tx, events, task).await?;
        if finish {
            sqlx::query("UPDATE runs SET status = 'done', busy = FALSE WHERE run_id = $1")
                .bind(&f.run_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.after_append(events).await;
        Ok(true)
    }

    async fn listen(&self) -> Result<Option<mpsc::Receiver<Ring>>> {
        let listener = connect_listener(&self.options).await?;
        let (tx, rx) = mpsc::channel(RING_BUFFER);
        tokio::spawn(follow(listener, self.options.clone(), tx));
        Ok(Some(rx))
    }
}

async fn connect_listener(
    options: &sqlx::postgres::PgConnectOptions,
) -> std::result::Result<PgListener, sqlx::Error> {
    // A pool of its own (one connection, never idle-closed): PgListener
    // reconnects through it, and it takes nothing from the store's pool.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen_all([EVENTS, RUNS, CANCEL]).await?;
    Ok(listener)
}

/// Forwards notifications as rings until the task layer goes away.
/// sqlx 0.9 (checked in its source, as in 0.8): `try_recv` returns `Ok(None)`
/// after a lost connection, having reconnected and re-issued LISTEN; other
/// failures (a reset) are `Err`, and the listener is rebuilt. Both may have
/// dropped notifications: the task layer is told to read everything again.
async fn follow(
    mut listener: PgListener,
    options: sqlx::postgres::PgConnectOptions,
    tx: mpsc::Sender<Ring>,
) {
    loop {
        let ring = match listener.try_recv().await {
            Ok(Some(n)) => parse(n.channel(), n.payload()),
            Ok(None) => Some(Ring::Reconnected),
            Err(e) => {
                tracing::warn!(error = %e, "the database listener failed; reconnecting");
                loop {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match connect_listener(&options).await {
                        Ok(l) => break listener = l,
                        Err(e) => tracing::debug!(error = %e, "database listener: still down"),
                    }
                }
                Some(Ring::Reconnected)
            }
        };
        if let Some(ring) = ring {
            // Full: the task layer is behind; it will read the tables anyway.
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(ring) {
                return;
            }
        }
    }
}

fn parse(channel: &str, payload: &str) -> Option<Ring> {
    match channel {
        EVENTS => {
            let (first, rest) = payload.split_once(' ')?;
            let (seq, task_id) = rest.split_once(' ')?;
            Some(Ring::Events {
                task_id: task_id.to_string(),
                first: first.parse().ok()?,
                seq: seq.parse().ok()?,
            })
        }
        RUNS => Some(Ring::RunQueued),
        CANCEL => {
            let (reason, task_id) = payload.split_once(' ')?;
            Some(Ring::Cancel {
                task_id: task_id.to_string(),
                reason: reason.to_string(),
            })
        }
        _ => None,
    }
}
