//! Durable writes: `POST /ap/v1/agent/tasks` through Envoy, each create
//! acknowledged only once it is on disk. References measured here on the same
//! disk: raw fsyncs/s and SQLite single-row commits/s (WAL, synchronous=FULL):
//! beating them needs group commit.

use std::{
    io::Write,
    path::Path,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::Result;
use sqlx::{ConnectOptions, Connection, sqlite::SqliteConnectOptions};

use crate::{
    Row, load,
    stack::{Stack, StackOptions},
};

const SECS: u32 = 5;
const CONNS: u32 = 128;

pub async fn run(rows: &mut Vec<Row>) -> Result<()> {
    let stack = Stack::start(StackOptions {
        envoy: true,
        ..Default::default()
    })
    .await?;
    let fsyncs = fsync_ceiling(&stack.data_dir, Duration::from_secs(2))?;
    let commits = sqlite_commit_ceiling(&stack.data_dir, Duration::from_secs(2)).await?;

    let script = stack.root.path().join("create.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\n\
         wrk.body = '{\"input\":\"benchmark create\",\"additional_input\":{\"team\":\"bench\"}}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;
    let s = load::wrk(
        &format!("{}/ap/v1/agent/tasks", stack.rest_url),
        SECS,
        CONNS,
        Some(&script),
    )?;
    rows.push(
        Row::at_least(
            "Durable writes via Envoy",
            &format!("POST /ap/v1/agent/tasks creates/s ({CONNS} conns)"),
            s.rate(),
            5000.0,
            &format!("fsync ceiling {fsyncs:.0}/s; SQLite single-row commits {commits:.0}/s"),
        )
        .with_errors(s.errors),
    );
    rows.push(Row::info(
        "Durable writes via Envoy",
        "create p99 ms under that load",
        s.p99_ms,
        "",
    ));

    // Every acknowledged create must be stored (the database is read after
    // agentd stopped, straight from the file).
    let db = stack.data_dir.join("agentd.db");
    let Stack { mut agentd, .. } = stack;
    agentd.stop();
    let mut conn = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))?
        .read_only(true)
        .connect()
        .await?;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    let acknowledged = s.ok as i64;
    rows.push(Row {
        measured: format!("{stored} stored / {acknowledged} acknowledged"),
        target: "all stored".into(),
        reference: "read from the SQLite file after agentd stopped".into(),
        pass: Some(stored >= acknowledged),
        ..Row::info(
            "Durable writes via Envoy",
            "acknowledged creates stored",
            0.0,
            "",
        )
    });
    Ok(())
}

/// Overwrite-and-fdatasync of one 4 KiB block, as fast as the disk allows.
fn fsync_ceiling(dir: &Path, for_: Duration) -> Result<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [7u8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < for_ {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// Single-row autocommit INSERTs into a WAL database with synchronous=FULL.
async fn sqlite_commit_ceiling(dir: &Path, for_: Duration) -> Result<f64> {
    let path = dir.join("commit-probe.db");
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .connect()
        .await?;
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < for_ {
        sqlx::query("INSERT INTO t (body) VALUES ('benchmark create')")
            .execute(&mut conn)
            .await?;
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    conn.close().await?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(rate)
}
