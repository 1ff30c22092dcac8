//! Scale of stored work: 100,000 tasks with 1,000,000 events in the
//! database. agentd's start to SERVING, list/filter/paginate latency through
//! Envoy, and idle RSS (stored tasks must not be held in memory). Reference:
//! the same start on an empty database.

use std::{path::Path, time::Instant};

use anyhow::Result;
use sqlx::{ConnectOptions, Connection, sqlite::SqliteConnectOptions};

use crate::{
    Row, load,
    stack::{Stack, StackOptions, rss},
};

pub const TASKS: i64 = 100_000;
pub const EVENTS_PER_TASK: i64 = 10;
const CALLS: usize = 300;

pub async fn run(rows: &mut Vec<Row>) -> Result<()> {
    let empty = Stack::start(StackOptions {
        ..Default::default()
    })
    .await?;
    let empty_start = empty.start_time;
    drop(empty);

    let seeded = tempfile::tempdir()?;
    let data_dir = seeded.path().join("data");
    let t = Instant::now();
    seed(&data_dir).await?;
    let seeding = t.elapsed().as_secs_f64();

    let stack = Stack::start(StackOptions {
        data_dir: Some(data_dir.clone()),
        envoy: true,
        ..Default::default()
    })
    .await?;
    let w = "Scale: 100k tasks, 1M events";
    rows.push(Row::at_most(
        w,
        "start to SERVING ms",
        stack.start_time.as_secs_f64() * 1000.0,
        300.0,
        &format!(
            "{:.0} ms on an empty database (seeded in {seeding:.1} s)",
            empty_start.as_secs_f64() * 1000.0
        ),
    ));

    let (worst, worst_name, details) = list_p99s(&stack.rest_url).await?;
    rows.push(Row::at_most(
        w,
        &format!("list/filter/paginate p99 ms (worst: {worst_name})"),
        worst,
        10.0,
        &format!("p99 ms by query: {details}"),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (idle, _) = rss(stack.agentd_pid());
    rows.push(Row::at_most(
        w,
        "idle RSS MB after the queries",
        idle as f64 / 1e6,
        40.0,
        "",
    ));
    Ok(())
}

/// p99 of each list/filter/paginate query over the seeded tasks, through
/// Envoy at `base`: the worst (ms, query) and every query's figure.
pub async fn list_p99s(base: &str) -> Result<(f64, &'static str, String)> {
    let created_after = time::OffsetDateTime::from_unix_timestamp(1_700_000_000 + TASKS - 500)?
        .format(&time::format_description::well_known::Rfc3339)?;
    let queries = [
        (
            "first page",
            format!("{base}/ap/v1/agent/tasks?page=1&page_size=20"),
        ),
        (
            "last page",
            format!("{base}/ap/v1/agent/tasks?page={}&page_size=20", TASKS / 20),
        ),
        (
            "status filter, page 50",
            format!("{base}/ap/v1/agent/tasks?status=failed&page=50&page_size=20"),
        ),
        (
            "created_after filter",
            format!("{base}/ap/v1/agent/tasks?created_after={created_after}&page_size=100"),
        ),
        (
            "Trae list, status filter",
            format!("{base}/api/tasks?status=stopped"),
        ),
        (
            "Trae status (10 events)",
            format!("{base}/api/tasks/{}/status", task_id(TASKS / 2)),
        ),
    ];
    let http = reqwest::Client::new();
    let mut worst: (f64, &'static str) = (0.0, "");
    let mut details = Vec::new();
    for (name, url) in &queries {
        let mut h = load::histogram();
        let mut errors = 0;
        for _ in 0..CALLS {
            let t = Instant::now();
            let ok = match http.get(url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
            } else {
                errors += 1;
            }
        }
        let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
        if errors > 0 {
            anyhow::bail!("{name}: {errors} of {CALLS} requests failed ({url})");
        }
        details.push(format!("{name} {p99:.1}"));
        if p99 > worst.0 {
            worst = (p99, name);
        }
    }
    Ok((worst.0, worst.1, details.join("; ")))
}

fn task_id(i: i64) -> String {
    format!("{i:08x}-0000-4000-8000-{i:012x}")
}

/// Creates the schema with agentd's own migrations, then fills it in SQL.
pub async fn seed(data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let db = data_dir.join("agentd.db");
    drop(agentd::store::SqliteStore::open(&db).await?);
    let mut conn = SqliteConnectOptions::new()
        .filename(&db)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .connect()
        .await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO tasks (task_id, input, additional_input, status, origin, run_spec, created_at, \
           modified_at, started_at, finished_at, result, error, input_tokens, output_tokens, cost_usd) \
         SELECT printf('%08x-0000-4000-8000-%012x', i, i), 'seeded task ' || i, '{\"team\":\"bench\"}', \
           CASE i % 20 WHEN 0 THEN 'failed' WHEN 1 THEN 'stopped' WHEN 2 THEN 'created' ELSE 'completed' END, \
           CASE i % 2 WHEN 0 THEN 'trae' ELSE 'agent_protocol' END, NULL, \
           (1700000000 + i) * 1000, (1700000000 + i) * 1000 + 500, (1700000000 + i) * 1000, \
           (1700000000 + i) * 1000 + 400, 'done', NULL, 1200, 300, 0.0042 FROM n",
    )
    .bind(TASKS)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < ?1) \
         INSERT INTO events (task_id, seq, type, timestamp, body) \
         SELECT t.task_id, s.seq, CASE s.seq WHEN 1 THEN 'start' WHEN ?1 THEN 'end' ELSE 'step' END, \
           t.created_at + s.seq, '{\"message\":\"seeded event\",\"data\":{\"step\":' || s.seq || '}}' \
         FROM tasks t CROSS JOIN s",
    )
    .bind(EVENTS_PER_TASK)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}
