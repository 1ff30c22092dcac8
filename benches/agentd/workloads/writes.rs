//! Durable writes: `POST /ap/v1/agent/tasks` through Envoy, each create
//! acknowledged only once it is on disk. References measured here on the same
//! disk: raw fsyncs/s and SQLite single-row commits/s (WAL, synchronous=FULL):
//! beating them needs group commit.
//!
//! At 8 and 32 connections the creates are held against reads of a task
//! (`GET /ap/v1/agent/tasks/{id}`) at the same connections, in the same run:
//! creates/s as a share of reads/s, and the CPU Envoy and agentd spend per
//! create next to what they spend per read.

use std::{
    io::Write,
    path::Path,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::Result;
use sqlx::{ConnectOptions, Connection, sqlite::SqliteConnectOptions};

use crate::{
    Row,
    load::{self, Summary},
    stack::{Stack, StackOptions, cpu_time},
};

const SECS: u32 = 5;
const CONNS: u32 = 128;
/// Where creates are compared with reads (and the CPU per request measured).
const COMPARED_CONNS: [u32; 2] = [8, 32];
const W: &str = "Durable writes via Envoy";

/// One wrk run, and the CPU µs each process spent per successful request.
struct Load {
    s: Summary,
    envoy_us: f64,
    agentd_us: f64,
}

fn wrk_with_cpu(stack: &Stack, url: &str, conns: u32, script: Option<&Path>) -> Result<Load> {
    let envoy = stack.envoy_pid().expect("the writes stack runs Envoy");
    let agentd = stack.agentd_pid();
    let (e0, a0) = (cpu_time(envoy), cpu_time(agentd));
    let s = load::wrk(url, SECS, conns, script)?;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / s.ok.max(1) as f64;
    let (envoy_us, agentd_us) = (per(cpu_time(envoy) - e0), per(cpu_time(agentd) - a0));
    Ok(Load {
        s,
        envoy_us,
        agentd_us,
    })
}

pub async fn run(rows: &mut Vec<Row>) -> Result<()> {
    let stack = Stack::start(StackOptions {
        envoy: true,
        ..Default::default()
    })
    .await?;
    let fsyncs = fsync_ceiling(&stack.data_dir, Duration::from_secs(2))?;
    let commits = sqlite_commit_ceiling(&stack.data_dir, Duration::from_secs(2)).await?;

    let script = create_script(stack.root.path())?;
    let creates_url = format!("{}/ap/v1/agent/tasks", stack.rest_url);
    let read_id = create_one(&creates_url).await?;
    let read_url = format!("{creates_url}/{read_id}");
    let mut acknowledged = 1u64;
    for conns in COMPARED_CONNS {
        let read = wrk_with_cpu(&stack, &read_url, conns, None)?;
        let create = wrk_with_cpu(&stack, &creates_url, conns, Some(&script))?;
        acknowledged += create.s.ok;
        compare(rows, conns, &read, &create);
    }

    let s = load::wrk(&creates_url, SECS, CONNS, Some(&script))?;
    acknowledged += s.ok;
    rows.push(
        Row::at_least(
            W,
            &format!("POST /ap/v1/agent/tasks creates/s ({CONNS} conns)"),
            s.rate(),
            5000.0,
            &format!("fsync ceiling {fsyncs:.0}/s; SQLite single-row commits {commits:.0}/s"),
        )
        .with_errors(s.errors),
    );
    rows.push(Row::info(W, "create p99 ms under that load", s.p99_ms, ""));

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
    let acknowledged = acknowledged as i64;
    rows.push(Row {
        measured: format!("{stored} stored / {acknowledged} acknowledged"),
        target: "all stored".into(),
        reference: "read from the SQLite file after agentd stopped".into(),
        pass: Some(stored >= acknowledged),
        ..Row::info(W, "acknowledged creates stored", 0.0, "")
    });
    Ok(())
}

/// Creates one task (the one the reads read); its id.
async fn create_one(url: &str) -> Result<String> {
    let body = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"input":"benchmark read"}"#)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let reply: serde_json::Value = serde_json::from_slice(&body)?;
    match reply["task_id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => anyhow::bail!("create answered without a task_id: {reply}"),
    }
}

/// The rows comparing creates with reads at `conns` connections; the targets
/// are held at 32.
fn compare(rows: &mut Vec<Row>, conns: u32, read: &Load, create: &Load) {
    let targets = conns == 32;
    let cpu = |l: &Load| {
        format!(
            "CPU µs/req: Envoy {:.0}, agentd {:.0}",
            l.envoy_us, l.agentd_us
        )
    };
    rows.push(
        Row::info(
            W,
            &format!("GET /ap/v1/agent/tasks/{{id}} req/s ({conns} conns)"),
            read.s.rate(),
            &format!(
                "p50 {:.2} / p99 {:.2} ms; {}",
                read.s.p50_ms,
                read.s.p99_ms,
                cpu(read)
            ),
        )
        .with_errors(read.s.errors),
    );
    let creates = format!("POST /ap/v1/agent/tasks creates/s ({conns} conns)");
    let note = format!(
        "p50 {:.2} / p99 {:.2} ms; {}",
        create.s.p50_ms,
        create.s.p99_ms,
        cpu(create)
    );
    let row = if targets {
        Row::ratio(
            W,
            &creates,
            create.s.rate(),
            read.s.rate(),
            0.5,
            &format!("reads/s ({conns} conns)"),
        )
        .with_note(&note)
    } else {
        Row::info(W, &creates, create.s.rate(), &note)
    };
    rows.push(row.with_errors(create.s.errors));
    if !targets {
        return;
    }
    rows.push(Row::at_most(
        W,
        &format!("create p99 ms ({conns} conns)"),
        create.s.p99_ms,
        10.0,
        &format!("p50 {:.2} ms", create.s.p50_ms),
    ));
    let envoy_ratio = create.envoy_us / read.envoy_us.max(1e-9);
    rows.push(Row {
        measured: format!("{:.0} µs ({envoy_ratio:.2}× a read)", create.envoy_us),
        target: "≤ 1.50× a read".into(),
        reference: format!("{:.0} µs per read", read.envoy_us),
        pass: Some(envoy_ratio <= 1.5),
        ..Row::info(W, &format!("Envoy CPU per create ({conns} conns)"), 0.0, "")
    });
    rows.push(Row::at_most(
        W,
        &format!("agentd CPU µs per create ({conns} conns)"),
        create.agentd_us,
        80.0,
        &format!("{:.0} µs per read", read.agentd_us),
    ));
}

/// The wrk script of a create (`POST /ap/v1/agent/tasks`), written in `dir`.
pub fn create_script(dir: &Path) -> Result<std::path::PathBuf> {
    let script = dir.join("create.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\n\
         wrk.body = '{\"input\":\"benchmark create\",\"additional_input\":{\"team\":\"bench\"}}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;
    Ok(script)
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
