//! Group commit: every write of the SQLite store runs on one connection owned
//! by the writer task. Writes that arrive while a transaction is being
//! committed wait and then share the next one, so under load many writes cost
//! one fsync; alone, a write is one transaction as before. A write's caller is
//! answered only after its transaction committed (it is on disk).
//!
//! Each write runs inside a SAVEPOINT, so one failing write (a constraint)
//! is rolled back alone and does not fail the others in its batch.

use futures_util::future::BoxFuture;
use sqlx::{Connection as _, SqliteConnection, sqlite::SqliteConnectOptions};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer before callers queue up behind the channel.
const QUEUE: usize = 4096;

/// What a write does with the connection; returns whether it succeeded and
/// how to answer its caller once the transaction's fate is known.
type Work =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, (bool, Reply)> + Send>;
type Reply = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

pub(super) struct Writer {
    jobs: mpsc::Sender<Work>,
}

impl Writer {
    pub async fn open(options: &SqliteConnectOptions) -> anyhow::Result<Self> {
        let conn = SqliteConnection::connect_with(options).await?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(conn, rx));
        Ok(Self { jobs })
    }

    /// Runs `f` in the next transaction and returns its result once that
    /// transaction committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let work: Work = Box::new(move |conn| {
            Box::pin(async move {
                let out = f(conn).await;
                let ok = out.is_ok();
                let reply: Reply = Box::new(move |committed| {
                    let _ = tx.send(match (out, committed) {
                        (Err(e), _) => Err(e),
                        (Ok(_), Err(e)) => {
                            Err(anyhow::anyhow!("database commit failed: {e}").into())
                        }
                        (Ok(v), Ok(())) => Ok(v),
                    });
                });
                (ok, reply)
            })
        });
        self.jobs
            .send(work)
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))?;
        rx.await
            .map_err(|_| Error::from(anyhow::anyhow!("the database write was abandoned")))?
    }
}

async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Work>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        commit_batch(&mut conn, std::mem::take(&mut batch)).await;
    }
}

async fn commit_batch(conn: &mut SqliteConnection, batch: Vec<Work>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
        // Dropping the work drops its reply: callers see the write abandoned.
        tracing::error!(error = %e, "cannot begin a database transaction");
        return;
    }
    // Savepoints isolate one write's failure from the others in the batch;
    // a batch of one needs none (its failure rolls back the transaction).
    let alone = batch.len() == 1;
    let mut replies = Vec::with_capacity(batch.len());
    let mut any_ok = false;
    for work in batch {
        if !alone && let Err(e) = exec(conn, "SAVEPOINT w").await {
            // Dropping the work drops its reply: its caller sees it abandoned.
            tracing::error!(error = %e, "a database write could not start");
            continue;
        }
        let (ok, reply) = work(conn).await;
        if !alone {
            let undo = if ok {
                "RELEASE w"
            } else {
                "ROLLBACK TO w; RELEASE w"
            };
            if let Err(e) = exec(conn, undo).await {
                tracing::error!(error = %e, "cannot end a savepoint");
            }
        }
        any_ok |= ok;
        replies.push(reply);
    }
    let outcome = if any_ok {
        exec(conn, "COMMIT").await
    } else {
        exec(conn, "ROLLBACK").await
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "database transaction failed");
        let _ = exec(conn, "ROLLBACK").await;
    }
    let outcome = outcome.map_err(|e| e.to_string());
    for reply in replies {
        reply(outcome.clone());
    }
}

async fn exec(
    conn: &mut SqliteConnection,
    sql: &'static str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(conn).await.map(|_| ())
}
