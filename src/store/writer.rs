//! Group commit: every write of the SQLite store runs on one connection owned
//! by the writer task. Writes that arrive while a transaction is being
//! committed wait and then share the next one, so under load many writes cost
//! one fsync; alone, a write is one transaction as before. A write's caller is
//! answered only after its transaction committed (it is on disk).
//!
//! A write of several statements runs inside a SAVEPOINT, so when it fails
//! (a constraint) it is rolled back alone and does not fail the others in its
//! batch. A write of one statement needs none: SQLite backs a failing
//! statement out by itself and keeps the transaction. Each statement is a
//! round trip to sqlx's worker thread (two thread wake-ups), so skipping the
//! SAVEPOINT/RELEASE pair cuts a create's trips from three to one. An error
//! that makes SQLite roll the whole transaction back (I/O, disk full) is seen
//! by a rollback hook: the writes before it are answered with the error and
//! the rest go into a new transaction, never into autocommit.
//!
//! A row insert ([`Writer::insert_row`], a create) is cheaper still: the
//! inserts of one table next to each other in a batch become one multi-row
//! INSERT, one trip for all of them. If that statement fails (one row's
//! constraint), SQLite backs it out and the rows are inserted one by one, so
//! only the bad row fails.
//!
//! The cheapest batches cost one trip in all: a lone single-statement write
//! runs in autocommit (its own transaction), and a batch of rows of one table
//! is sent as `BEGIN IMMEDIATE; INSERT …; COMMIT` (when that fails, it is
//! rolled back and the batch goes the general way above).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

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

enum Job {
    Work {
        work: Work,
        /// The write is a single SQL statement (triggers included): it needs
        /// no savepoint of its own.
        one_statement: bool,
    },
    Row(Row, oneshot::Sender<Result<()>>),
}

/// A query whose values are owned (bound by a [`Row`]).
pub(super) type RowQuery = sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// One row for [`Writer::insert_row`].
pub(super) struct Row {
    /// `INSERT INTO table (a, b, …) VALUES `: rows with the same text share
    /// a statement.
    pub insert: &'static str,
    /// One row's placeholders: `(?, ?, …)`.
    pub values: &'static str,
    /// Binds the row's values, in the order of `values` (again for a retry
    /// alone).
    pub bind: Box<dyn Fn(RowQuery) -> RowQuery + Send>,
}

/// Rows in one multi-row INSERT at most (SQLite allows 32,766 values).
const MAX_ROWS: usize = 256;

pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub async fn open(options: &SqliteConnectOptions) -> anyhow::Result<Self> {
        let mut conn = SqliteConnection::connect_with(options).await?;
        // Set when SQLite rolls a transaction back, explicitly or by itself
        // after an error; not by ROLLBACK TO a savepoint.
        let rolled_back = Arc::new(AtomicBool::new(false));
        let flag = rolled_back.clone();
        conn.lock_handle()
            .await?
            .set_rollback_hook(move || flag.store(true, Ordering::SeqCst));
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(conn, rolled_back, rx));
        Ok(Self { jobs })
    }

    /// Runs `f` in the next transaction and returns its result once that
    /// transaction committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.submit(f, false).await
    }

    /// As [`Writer::write`], for an `f` that runs exactly one SQL statement
    /// (its triggers are part of it): it goes without a savepoint.
    pub async fn write_statement<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.submit(f, true).await
    }

    /// Inserts `row` in the next transaction; returns once it committed.
    pub async fn insert_row(&self, row: Row) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Row(row, tx))
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))?;
        rx.await
            .map_err(|_| Error::from(anyhow::anyhow!("the database write was abandoned")))?
    }

    async fn submit<T, F>(&self, f: F, one_statement: bool) -> Result<T>
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
            .send(Job::Work {
                work,
                one_statement,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))?;
        rx.await
            .map_err(|_| Error::from(anyhow::anyhow!("the database write was abandoned")))?
    }
}

type Jobs = std::iter::Peekable<std::vec::IntoIter<Job>>;

async fn run(
    mut conn: SqliteConnection,
    rolled_back: Arc<AtomicBool>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The connection is outside any transaction for sure: the last one
    // ended in a COMMIT or ROLLBACK that succeeded (or in a statement that
    // succeeded in autocommit). Only then may a statement run alone.
    let mut settled = true;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if settled && let Some(ok) = run_alone(&mut conn, &mut batch).await {
            settled = ok;
            continue;
        }
        if settled && commit_rows_at_once(&mut conn, &mut batch).await {
            continue;
        }
        let mut jobs = std::mem::take(&mut batch).into_iter().peekable();
        // Normally one transaction; another only when SQLite rolled one back
        // in the middle of the batch.
        settled = false;
        while jobs.len() > 0 {
            match commit_some(&mut conn, &rolled_back, &mut jobs).await {
                Some(ended) => settled = ended,
                None => break,
            }
        }
    }
}

/// A batch of one single-statement write runs in autocommit: SQLite makes
/// the statement its own transaction and commits it (durably, with
/// `synchronous=FULL`) before the statement returns, so a success is on disk
/// and a failure left nothing. One thread round trip instead of three
/// (`BEGIN`, the statement, `COMMIT`). None: not such a batch.
async fn run_alone(conn: &mut SqliteConnection, batch: &mut Vec<Job>) -> Option<bool> {
    if batch.len() != 1
        || !matches!(
            batch[0],
            Job::Work {
                one_statement: true,
                ..
            }
        )
    {
        return None;
    }
    let Some(Job::Work { work, .. }) = batch.pop() else {
        unreachable!("one single-statement write")
    };
    let (ok, reply) = work(conn).await;
    // Committed when it succeeded; a failure answers with its own error.
    reply(Ok(()));
    Some(ok)
}

/// A batch of rows for one table only (creates under load) is one statement
/// to sqlx's worker: `BEGIN IMMEDIATE; INSERT …; COMMIT` (sqlx binds the
/// values across the statements), one thread round trip instead of three.
/// True: committed and answered (`batch` is left empty). False: nothing of it is left (rolled back,
/// or not tried) and the batch goes the way of every other, which tells a bad
/// row from the rest and handles a transaction SQLite rolled back.
async fn commit_rows_at_once(conn: &mut SqliteConnection, batch: &mut Vec<Job>) -> bool {
    let Some(Job::Row(first, _)) = batch.first() else {
        return false;
    };
    if batch.len() > MAX_ROWS
        || !batch
            .iter()
            .all(|job| matches!(job, Job::Row(row, _) if row.insert == first.insert))
    {
        return false;
    }
    let mut sql =
        String::with_capacity(32 + first.insert.len() + batch.len() * (first.values.len() + 2));
    sql.push_str("BEGIN IMMEDIATE; ");
    sql.push_str(first.insert);
    for i in 0..batch.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(first.values);
    }
    sql.push_str("; COMMIT");
    // Only the rows' constant fragments; every value is bound.
    let query = batch
        .iter()
        .fold(sqlx::query(sqlx::AssertSqlSafe(sql)), |q, job| match job {
            Job::Row(row, _) => (row.bind)(q),
            Job::Work { .. } => unreachable!("only rows"),
        });
    if query.execute(&mut *conn).await.is_err() {
        // Whichever statement failed, the transaction (if one is open) holds
        // nothing committed; the rows are inserted again below.
        let _ = exec(conn, "ROLLBACK").await;
        return false;
    }
    // Committed: the replies are sent only now.
    for job in batch.drain(..) {
        if let Job::Row(_, tx) = job {
            let _ = tx.send(Ok(()));
        }
    }
    true
}

/// Runs jobs from `jobs` in one transaction and answers them; stops early
/// when SQLite rolled the transaction back. None: no transaction could be
/// started (the jobs left are dropped, their callers see them abandoned).
/// Else whether it ended in a COMMIT or ROLLBACK that succeeded.
async fn commit_some(
    conn: &mut SqliteConnection,
    rolled_back: &AtomicBool,
    jobs: &mut Jobs,
) -> Option<bool> {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
        tracing::error!(error = %e, "cannot begin a database transaction");
        return None;
    }
    rolled_back.store(false, Ordering::SeqCst);
    // A batch of one needs no savepoint (its failure rolls back the
    // transaction).
    let alone = jobs.len() == 1;
    let mut replies = Vec::with_capacity(jobs.len());
    let mut any_ok = false;
    let mut lost = false;
    while let Some(job) = jobs.next() {
        let (work, one_statement) = match job {
            Job::Work {
                work,
                one_statement,
            } => (work, one_statement),
            Job::Row(row, tx) => {
                // This row and the rows for the same table right behind it.
                let mut rows = vec![(row, tx)];
                while rows.len() < MAX_ROWS
                    && let Some(Job::Row(next, _)) = jobs.peek()
                    && next.insert == rows[0].0.insert
                {
                    let Some(Job::Row(next, tx)) = jobs.next() else {
                        unreachable!("peeked a row")
                    };
                    rows.push((next, tx));
                }
                let (ok, row_replies) = insert_rows(conn, rolled_back, rows).await;
                any_ok |= ok;
                replies.extend(row_replies);
                if rolled_back.load(Ordering::SeqCst) {
                    lost = true;
                    break;
                }
                continue;
            }
        };
        let savepoint = !alone && !one_statement;
        if savepoint && let Err(e) = exec(conn, "SAVEPOINT w").await {
            // Dropping the work drops its reply: its caller sees it abandoned.
            tracing::error!(error = %e, "a database write could not start");
            continue;
        }
        let (ok, reply) = work(conn).await;
        replies.push(reply);
        if rolled_back.load(Ordering::SeqCst) {
            // The transaction is gone, with every write before this one.
            lost = true;
            break;
        }
        if savepoint {
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
    }
    let outcome = if lost {
        tracing::error!("the database rolled a transaction back after an error");
        Err("the database rolled the transaction back after an error".to_string())
    } else {
        let outcome = if any_ok {
            exec(conn, "COMMIT").await
        } else {
            exec(conn, "ROLLBACK").await
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "database transaction failed");
            let _ = exec(conn, "ROLLBACK").await;
        }
        outcome.map_err(|e| e.to_string())
    };
    let ended = !lost && outcome.is_ok();
    for reply in replies {
        reply(outcome.clone());
    }
    Some(ended)
}

/// Inserts `rows` (all of one table): one statement, or one per row when
/// that failed. Whether any row went in, and how to answer each.
async fn insert_rows(
    conn: &mut SqliteConnection,
    rolled_back: &AtomicBool,
    rows: Vec<(Row, oneshot::Sender<Result<()>>)>,
) -> (bool, Vec<Reply>) {
    let answer = |tx: oneshot::Sender<Result<()>>, out: Result<()>| -> Reply {
        Box::new(move |committed| {
            let _ = tx.send(match (out, committed) {
                (Err(e), _) => Err(e),
                (Ok(()), Err(e)) => Err(anyhow::anyhow!("database commit failed: {e}").into()),
                (Ok(()), Ok(())) => Ok(()),
            });
        })
    };
    if rows.len() > 1 {
        let mut sql = String::from(rows[0].0.insert);
        for i in 0..rows.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(rows[0].0.values);
        }
        // Only the rows' constant fragments; every value is bound.
        let query = rows
            .iter()
            .fold(sqlx::query(sqlx::AssertSqlSafe(sql)), |q, (row, _)| {
                (row.bind)(q)
            });
        match query.execute(&mut *conn).await {
            Ok(_) => {
                return (
                    true,
                    rows.into_iter().map(|(_, tx)| answer(tx, Ok(()))).collect(),
                );
            }
            // The transaction is gone (the caller sees it by the hook).
            Err(e) if rolled_back.load(Ordering::SeqCst) => {
                let e = e.to_string();
                let replies = rows
                    .into_iter()
                    .map(|(_, tx)| answer(tx, Err(anyhow::anyhow!("{e}").into())))
                    .collect();
                return (false, replies);
            }
            // SQLite backed the statement out: one by one, only a bad row fails.
            Err(_) => {}
        }
    }
    let mut any_ok = false;
    let mut replies = Vec::with_capacity(rows.len());
    for (row, tx) in rows {
        if rolled_back.load(Ordering::SeqCst) {
            // Not run: answered with the transaction's failure.
            replies.push(answer(tx, Ok(())));
            continue;
        }
        let sql = format!("{}{}", row.insert, row.values);
        let out = (row.bind)(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(Into::into);
        any_ok |= out.is_ok();
        replies.push(answer(tx, out));
    }
    (any_ok, replies)
}

async fn exec(
    conn: &mut SqliteConnection,
    sql: &'static str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(conn).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sqlx::{Connection as _, sqlite::SqliteConnectOptions};
    use tokio::sync::Notify;

    use super::Writer;
    use crate::error::Result;

    async fn open(dir: &std::path::Path) -> Writer {
        let options = SqliteConnectOptions::new()
            .filename(dir.join("w.db"))
            .create_if_missing(true);
        let writer = Writer::open(&options).await.unwrap();
        writer
            .write(|c| {
                Box::pin(async move {
                    sqlx::raw_sql("CREATE TABLE t (k TEXT PRIMARY KEY)")
                        .execute(c)
                        .await?;
                    Ok(())
                })
            })
            .await
            .unwrap();
        writer
    }

    fn insert(writer: &Arc<Writer>, k: &'static str) -> tokio::task::JoinHandle<Result<()>> {
        let writer = writer.clone();
        tokio::spawn(async move {
            writer
                .write_statement(move |c| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO t (k) VALUES (?)")
                            .bind(k)
                            .execute(c)
                            .await?;
                        Ok(())
                    })
                })
                .await
        })
    }

    fn insert_row(writer: &Arc<Writer>, k: &'static str) -> tokio::task::JoinHandle<Result<()>> {
        let writer = writer.clone();
        tokio::spawn(async move {
            writer
                .insert_row(super::Row {
                    insert: "INSERT INTO t (k) VALUES ",
                    values: "(?)",
                    bind: Box::new(move |q| q.bind(k)),
                })
                .await
        })
    }

    #[tokio::test]
    async fn rows_share_one_insert_and_a_bad_row_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Arc::new(open(dir.path()).await);
        insert_row(&writer, "a").await.unwrap().unwrap();
        let (go, held) = hold(&writer).await;
        let mut rows = Vec::new();
        for k in ["b", "a", "c", "d"] {
            rows.push(insert_row(&writer, k));
            settle().await;
        }
        go.notify_one();
        held.await.unwrap().unwrap();
        let done: Vec<bool> = futures_util::future::join_all(rows)
            .await
            .into_iter()
            .map(|r| r.unwrap().is_ok())
            .collect();
        assert_eq!(done, [true, false, true, true]);
        assert_eq!(keys(&writer).await, ["a", "b", "c", "d"]);
    }

    async fn keys(writer: &Writer) -> Vec<String> {
        writer
            .write(|c| {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT k FROM t ORDER BY k")
                        .fetch_all(c)
                        .await?)
                })
            })
            .await
            .unwrap()
    }

    /// Holds the writer until `go` is notified, so what is sent meanwhile
    /// shares the next transaction.
    async fn hold(writer: &Arc<Writer>) -> (Arc<Notify>, tokio::task::JoinHandle<Result<()>>) {
        let go = Arc::new(Notify::new());
        let (writer, wait) = (writer.clone(), go.clone());
        let (started, is_started) = tokio::sync::oneshot::channel();
        let held = tokio::spawn(async move {
            writer
                .write(move |_| {
                    Box::pin(async move {
                        let _ = started.send(());
                        wait.notified().await;
                        Ok(())
                    })
                })
                .await
        });
        is_started.await.unwrap();
        (go, held)
    }

    async fn settle() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_lone_failing_statement_fails_and_the_next_writes_commit() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Arc::new(open(dir.path()).await);
        insert(&writer, "a").await.unwrap().unwrap();
        assert!(insert(&writer, "a").await.unwrap().is_err());
        assert!(insert_row(&writer, "a").await.unwrap().is_err());
        insert(&writer, "b").await.unwrap().unwrap();
        insert_row(&writer, "c").await.unwrap().unwrap();
        assert_eq!(keys(&writer).await, ["a", "b", "c"]);
        // On disk: another connection sees them.
        let mut other = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}",
            dir.path().join("w.db").display()
        ))
        .await
        .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn a_failing_statement_fails_alone_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Arc::new(open(dir.path()).await);
        insert(&writer, "a").await.unwrap().unwrap();
        let (go, held) = hold(&writer).await;
        let b = insert(&writer, "b");
        settle().await;
        let dup = insert(&writer, "a");
        settle().await;
        let c = insert(&writer, "c");
        settle().await;
        go.notify_one();
        held.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        assert!(dup.await.unwrap().is_err(), "a duplicate key must fail");
        c.await.unwrap().unwrap();
        assert_eq!(keys(&writer).await, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_transaction_sqlite_rolled_back_fails_its_writes_and_the_rest_commit() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Arc::new(open(dir.path()).await);
        let (go, held) = hold(&writer).await;
        let before = insert(&writer, "before");
        settle().await;
        // Stands in for an error after which SQLite rolls the transaction back.
        let rollback = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write_statement(|c| {
                        Box::pin(async move {
                            sqlx::raw_sql("ROLLBACK").execute(c).await?;
                            Ok(())
                        })
                    })
                    .await
            })
        };
        settle().await;
        let after = insert(&writer, "after");
        settle().await;
        go.notify_one();
        // The held write committed alone; in the next batch, acknowledged
        // only if stored: the writes of the lost transaction fail.
        held.await.unwrap().unwrap();
        assert!(before.await.unwrap().is_err());
        assert!(rollback.await.unwrap().is_err());
        after.await.unwrap().unwrap();
        assert_eq!(keys(&writer).await, ["after"]);
    }
}
