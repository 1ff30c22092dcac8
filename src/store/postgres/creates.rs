//! Group commit of creates on one node: task rows that arrive while this
//! node's last batch commits wait, and then go in together as one multi-row
//! INSERT, one transaction and one commit for all of them. Alone, a create is
//! one INSERT as before. PostgreSQL already shares a WAL flush between
//! concurrent commits, but every transaction still costs the server a round
//! trip, a backend wake-up, a commit record and a counter update: with one
//! transaction per create, three nodes spent more CPU in PostgreSQL than in
//! agentd, on a machine they share with Envoy.
//!
//! A caller is answered once the statement (its own transaction) committed.
//! When it fails on a database error (one row's constraint), nothing of it is
//! committed and the rows are inserted one by one, so only the bad row fails.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{pg_text, runs::insert_task_in};
use crate::{
    error::Result,
    store::{Task, decode::json_text},
};

/// Batches committing at once per node. One: what arrives while it commits
/// waits and goes in the next, so under load a transaction carries every
/// create queued by then (the server's cost is mostly per transaction, not
/// per row); the nodes' transactions still share WAL flushes.
const IN_FLIGHT: usize = 1;
/// How long a batch smaller than the last waits for the rest (see `run`).
const GATHER: Duration = Duration::from_millis(1);
/// Rows in one INSERT at most.
const MAX_ROWS: usize = 256;
/// Creates waiting before callers queue up behind the channel.
const QUEUE: usize = 4096;

type Pending = (Task, oneshot::Sender<Result<()>>);

pub(super) struct Creates {
    pending: mpsc::Sender<Pending>,
}

impl Creates {
    pub fn start(pool: PgPool) -> Self {
        let (pending, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        Self { pending }
    }

    /// Inserts `t`; returns once its transaction committed.
    pub async fn insert(&self, t: &Task) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .send((t.clone(), tx))
            .await
            .map_err(|_| anyhow::anyhow!("the create batcher has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the database write was abandoned"))?
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut batch = Vec::with_capacity(MAX_ROWS);
    let mut last = 0;
    loop {
        // Taken before the rows: while every slot commits, arrivals queue
        // and the next batch takes all of them.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut batch, MAX_ROWS).await == 0 {
            return;
        }
        // Under load the callers the last batch answered come back together,
        // a little after the first of them: a transaction of its own for
        // that first would leave the rest waiting for its commit. Only then
        // (the last batch had more rows than this one so far), a moment for
        // them; alone, a create goes at once.
        if batch.len() < last {
            tokio::time::sleep(GATHER).await;
            while batch.len() < MAX_ROWS
                && let Ok(p) = rx.try_recv()
            {
                batch.push(p);
            }
        }
        last = batch.len();
        let rows = std::mem::replace(&mut batch, Vec::with_capacity(MAX_ROWS));
        let pool = pool.clone();
        tokio::spawn(async move {
            insert_batch(&pool, rows).await;
            drop(slot);
        });
    }
}

async fn insert_batch(pool: &PgPool, rows: Vec<Pending>) {
    if rows.len() > 1 {
        match insert_many(pool, &rows).await {
            Ok(()) => {
                for (_, tx) in rows {
                    let _ = tx.send(Ok(()));
                }
                return;
            }
            // A row's constraint (or its data): the statement is rolled
            // back whole; retried row by row below.
            Err(sqlx::Error::Database(e)) => {
                tracing::debug!(error = %e, rows = rows.len(), "a batch of creates failed");
            }
            // The connection or the server: every row fails with it (a
            // retry could find rows the lost commit did store).
            Err(e) => {
                let e = e.to_string();
                for (_, tx) in rows {
                    let _ = tx.send(Err(anyhow::anyhow!("database: {e}").into()));
                }
                return;
            }
        }
    }
    for (t, tx) in rows {
        let out = match pool.acquire().await {
            Ok(mut conn) => insert_task_in(&mut conn, &t).await,
            Err(e) => Err(e.into()),
        };
        let _ = tx.send(out);
    }
}

/// All of `rows` in one statement: one array per column, bound once, so the
/// statement text (and its prepared plan) is the same for any count.
async fn insert_many(pool: &PgPool, rows: &[Pending]) -> sqlx::Result<()> {
    fn column<T>(rows: &[Pending], f: impl Fn(&Task) -> T) -> Vec<T> {
        rows.iter().map(|(t, _)| f(t)).collect()
    }
    sqlx::query(
        "INSERT INTO tasks (task_id, input, additional_input, status, origin, run_spec, \
         created_at, modified_at, started_at, finished_at, result, error, input_tokens, \
         output_tokens, cost_usd, owner) \
         SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
         $6::TEXT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::TEXT[], \
         $12::TEXT[], $13::BIGINT[], $14::BIGINT[], $15::FLOAT8[], $16::TEXT[])",
    )
    .bind(column(rows, |t| t.task_id.clone()))
    .bind(column(rows, |t| pg_text(&t.input).into_owned()))
    .bind(column(rows, |t| json_text(&t.additional_input)))
    .bind(column(rows, |t| t.status.as_str()))
    .bind(column(rows, |t| t.origin.as_str()))
    .bind(column(rows, |t| t.run_spec.as_ref().map(|v| v.to_string())))
    .bind(column(rows, |t| t.created_at))
    .bind(column(rows, |t| t.modified_at))
    .bind(column(rows, |t| t.started_at))
    .bind(column(rows, |t| t.finished_at))
    .bind(column(rows, |t| {
        t.result.as_deref().map(|s| pg_text(s).into_owned())
    }))
    .bind(column(rows, |t| {
        t.error.as_deref().map(|s| pg_text(s).into_owned())
    }))
    .bind(column(rows, |t| t.input_tokens))
    .bind(column(rows, |t| t.output_tokens))
    .bind(column(rows, |t| t.cost_usd))
    .bind(column(rows, |t| t.owner.clone()))
    .execute(pool)
    .await?;
    Ok(())
}
