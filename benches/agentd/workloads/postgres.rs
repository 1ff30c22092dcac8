//! The PostgreSQL column: three agentd nodes on one PostgreSQL (durable
//! defaults) behind one Envoy, each figure next to the same workload on one
//! node with SQLite, measured in this run. Durable creates/s, fan-out and
//! cross-node delivery (a run on node 1, readers on every node), engine
//! steps/s, list latency over 100k tasks, and how soon a killed node's run is
//! taken over (resumed) by a survivor.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use sqlx::{Connection, postgres::PgConnection};

use super::{
    fanout::{Seen, grpc_reader, now_ms, raise_fd_limit, sse_reader},
    scale,
};
use crate::{
    Row,
    cluster::{Cluster, ClusterOptions, PgServer},
    llm::InstantLlm,
    load,
    stack::{Stack, StackOptions, cpu_time},
};
use agentd::proto::trae;

const W: &str = "PostgreSQL, 3 nodes (vs 1 node on SQLite)";
const NODES: usize = 3;

pub async fn run(rows: &mut Vec<Row>) -> Result<()> {
    raise_fd_limit();
    let pg = PgServer::start()?;
    // Each part on its own database and nodes; a failed part is a row.
    let parts: [(&str, PartResult); 5] = [
        ("creates", creates(rows, &pg).await),
        ("delivery", delivery(rows, &pg).await),
        ("engine", engine(rows, &pg).await),
        ("lists", lists(rows, &pg).await),
        ("node death", node_death(rows, &pg).await),
    ];
    for (name, result) in parts {
        if let Err(e) = result {
            rows.push(Row::failed(&format!("postgres: {name}"), &format!("{e:#}")));
        }
    }
    Ok(())
}

type PartResult = Result<()>;

const CREATE_SECS: u32 = 5;
const CREATE_CONNS: u32 = 32;

async fn creates(rows: &mut Vec<Row>, pg: &PgServer) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let script = super::writes::create_script(dir.path())?;
    let sqlite = Stack::start(StackOptions {
        envoy: true,
        ..Default::default()
    })
    .await?;
    let url = |base: &str| format!("{base}/ap/v1/agent/tasks");
    let reference = load::wrk(
        &url(&sqlite.rest_url),
        CREATE_SECS,
        CREATE_CONNS,
        Some(&script),
    )?;
    drop(sqlite);

    let mut cluster = Cluster::start(pg, "creates", ClusterOptions::default()).await?;
    let s = load::wrk(
        &url(&cluster.rest_url),
        CREATE_SECS,
        CREATE_CONNS,
        Some(&script),
    )?;
    cluster.stop();
    rows.push(
        Row::ratio(
            W,
            &format!("durable creates/s through Envoy ({CREATE_CONNS} conns)"),
            s.rate(),
            reference.rate(),
            0.6,
            &format!(
                "single-node SQLite creates/s; p50/p99 ms: PostgreSQL {:.1}/{:.1}, SQLite {:.1}/{:.1}",
                s.p50_ms, s.p99_ms, reference.p50_ms, reference.p99_ms
            ),
        )
        .with_errors(s.errors),
    );
    // Every acknowledged create is in the database once the nodes are gone.
    let mut conn = PgConnection::connect(&cluster.database_url).await?;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    rows.push(Row {
        measured: format!("{stored} stored / {} acknowledged", s.ok),
        target: "all stored".into(),
        reference: "counted in PostgreSQL after every node stopped".into(),
        pass: Some(stored >= s.ok as i64),
        ..Row::info(W, "acknowledged creates stored", 0.0, "")
    });
    Ok(())
}

/// Tool calls per model turn: 11 events a turn (see the fan-out workload).
const CALLS_PER_TURN: usize = 4;
const TURNS: usize = 450;
/// A pause before each answer: 11 events every ~10 ms with agentd's own
/// time per turn, about 1,000 events/s (the measured rate is printed).
const PACE: Duration = Duration::from_millis(4);
/// SSE readers through Envoy (least-request spreads them over the nodes).
const SSE: usize = 90;
/// gRPC readers on each node other than the run's.
const GRPC_PER_NODE: usize = 20;

struct Delivered {
    readers: usize,
    broken: usize,
    events: u32,
    per_sec: f64,
    /// p99 ms over every reader.
    all_p99: f64,
    /// p99 ms of the gRPC readers (on other nodes than the run's, in a cluster).
    grpc_p99: f64,
}

async fn delivery(rows: &mut Vec<Row>, pg: &PgServer) -> Result<()> {
    let llm = InstantLlm::start_with_calls(TURNS, CALLS_PER_TURN, PACE, false).await;
    let sqlite = Stack::start(StackOptions {
        envoy: true,
        trae_config: Some(llm.trae_config(TURNS + 10)),
        ..Default::default()
    })
    .await?;
    let reference = follow_one_run(
        &llm,
        &sqlite.rest_url,
        &sqlite.grpc_url,
        std::slice::from_ref(&sqlite.grpc_url),
        sqlite.root.path(),
    )
    .await?;
    drop(sqlite);

    let llm = InstantLlm::start_with_calls(TURNS, CALLS_PER_TURN, PACE, false).await;
    let cluster = Cluster::start(
        pg,
        "delivery",
        ClusterOptions {
            trae_config: Some(llm.trae_config(TURNS + 10)),
            ..Default::default()
        },
    )
    .await?;
    let others: Vec<String> = cluster.nodes[1..]
        .iter()
        .map(|n| n.grpc_url.clone())
        .collect();
    let d = follow_one_run(
        &llm,
        &cluster.rest_url,
        &cluster.nodes[0].grpc_url,
        &others,
        cluster.work_root(),
    )
    .await?;
    drop(cluster);

    rows.push(Row {
        measured: format!(
            "{} of {} readers complete and in order",
            d.readers - d.broken,
            d.readers
        ),
        target: "all".into(),
        reference: format!(
            "{} events at {:.0} events/s; single node: {} of {}",
            d.events,
            d.per_sec,
            reference.readers - reference.broken,
            reference.readers
        ),
        pass: Some(d.broken == 0 && reference.broken == 0),
        ..Row::info(W, "ordered, complete delivery across nodes", 0.0, "")
    });
    rows.push(Row::at_most(
        W,
        &format!(
            "cross-node delivery p99 ms (gRPC readers on 2 other nodes, {:.0} events/s)",
            d.per_sec
        ),
        d.grpc_p99,
        50.0,
        &format!(
            "{:.1} ms for gRPC readers on the run's node, single-node SQLite ({:.0} events/s)",
            reference.grpc_p99, reference.per_sec
        ),
    ));
    rows.push(Row::at_most(
        W,
        &format!(
            "fan-out p99 ms ({SSE} SSE via Envoy + {} gRPC, spread over 3 nodes)",
            GRPC_PER_NODE * (NODES - 1)
        ),
        d.all_p99,
        150.0,
        &format!(
            "{:.1} ms single-node SQLite, same readers",
            reference.all_p99
        ),
    ));
    Ok(())
}

/// Starts a run through `run_url`, follows it with SSE readers through
/// `rest_url` and gRPC readers on each of `reader_urls`, then lets the model
/// answer; every reader's events and latency (receive time minus the event's
/// timestamp, for events appended after the model was let go).
async fn follow_one_run(
    llm: &InstantLlm,
    rest_url: &str,
    run_url: &str,
    reader_urls: &[String],
    root: &Path,
) -> Result<Delivered> {
    let mut client = crate::TraeClient::connect(run_url.to_string()).await?;
    let task_id = crate::start_run_in(&mut client, root, "cross-node delivery benchmark").await?;
    let ready = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut readers = Vec::new();
    for _ in 0..SSE {
        let url = format!("{rest_url}/api/tasks/{task_id}/stream");
        readers.push(tokio::spawn(sse_reader(http.clone(), url, ready.clone())));
    }
    let ts: Arc<tokio::sync::Mutex<HashMap<u32, f64>>> = Default::default();
    for (n, url) in reader_urls.iter().enumerate() {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await?;
        for i in 0..GRPC_PER_NODE {
            readers.push(tokio::spawn(grpc_reader(
                channel.clone(),
                task_id.clone(),
                ready.clone(),
                (n == 0 && i == 0).then(|| ts.clone()),
            )));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < readers.len() {
        if let Some(i) = readers.iter().position(|r| r.is_finished()) {
            let failed = readers.swap_remove(i).await?;
            bail!("a reader ended before the run started: {:?}", failed.err());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} readers connected",
                ready.load(Ordering::Relaxed),
                readers.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let opened = Instant::now();
    let open_ms = now_ms();
    llm.open();
    let mut seen: Vec<Seen> = Vec::new();
    for r in readers {
        seen.push(r.await??);
    }
    let took = opened.elapsed().as_secs_f64();

    let ts = ts.lock().await;
    let last = ts.keys().copied().max().unwrap_or(0);
    let (mut all, mut grpc) = (load::histogram(), load::histogram());
    let mut broken = 0;
    for (i, s) in seen.iter().enumerate() {
        let in_order = s.windows(2).all(|w| w[1].0 == w[0].0 + 1);
        if !in_order || s.last().map(|e| e.0) != Some(last) {
            broken += 1;
        }
        for &(seq, at) in s {
            if let Some(t) = ts.get(&seq).filter(|t| **t >= open_ms.floor() - 1.0) {
                let us = ((at - t).max(0.001) * 1000.0) as u64;
                let _ = all.record(us);
                if i >= SSE {
                    let _ = grpc.record(us);
                }
            }
        }
    }
    let p99 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    Ok(Delivered {
        readers: seen.len(),
        broken,
        events: last,
        per_sec: f64::from(last) / took,
        all_p99: p99(&all),
        grpc_p99: p99(&grpc),
    })
}

const ENGINE_TASKS: usize = 99;
const ENGINE_TURNS: usize = 60;

async fn engine(rows: &mut Vec<Row>, pg: &PgServer) -> Result<()> {
    let llm = InstantLlm::start(ENGINE_TURNS, Duration::ZERO, true).await;
    let config = llm.trae_config(ENGINE_TURNS + 5);
    let sqlite = Stack::start(StackOptions {
        max_running_tasks: ENGINE_TASKS,
        trae_config: Some(config.clone()),
        ..Default::default()
    })
    .await?;
    let reference = run_many(std::slice::from_ref(&sqlite.grpc_url), sqlite.root.path()).await?;
    let reference_cpu = cpu_time(sqlite.agentd_pid());
    drop(sqlite);

    let cluster = Cluster::start(
        pg,
        "engine",
        ClusterOptions {
            max_running_tasks: ENGINE_TASKS / NODES,
            trae_config: Some(config),
            ..Default::default()
        },
    )
    .await?;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_url.clone()).collect();
    let before: Duration = cluster.nodes.iter().map(|n| cpu_time(n.proc.pid())).sum();
    let d = run_many(&urls, cluster.work_root()).await?;
    let cpu: Duration = cluster
        .nodes
        .iter()
        .map(|n| cpu_time(n.proc.pid()))
        .sum::<Duration>()
        - before;
    drop(cluster);

    let per_step = |cpu: Duration, steps: u64| cpu.as_secs_f64() * 1e6 / steps.max(1) as f64;
    rows.push(Row::info(
        W,
        &format!("engine steps/s in total ({ENGINE_TASKS} runs spread over 3 nodes)"),
        d.steps as f64 / d.secs,
        &format!(
            "{:.0}% of single-node SQLite ({:.0} steps/s); agentd CPU µs/step: {:.0} (3 nodes) vs {:.0}; {} runs not completed",
            100.0 * (d.steps as f64 / d.secs) / (reference.steps as f64 / reference.secs).max(1e-9),
            reference.steps as f64 / reference.secs,
            per_step(cpu, d.steps),
            per_step(reference_cpu, reference.steps),
            d.failed + reference.failed
        ),
    ));
    if d.failed + reference.failed > 0 {
        bail!("{} runs did not complete", d.failed + reference.failed);
    }
    Ok(())
}

struct Ran {
    steps: u64,
    failed: usize,
    secs: f64,
}

/// ENGINE_TASKS runs to their end, started round-robin through `urls`.
async fn run_many(urls: &[String], root: &Path) -> Result<Ran> {
    let mut channels = Vec::new();
    for u in urls {
        channels.push(
            tonic::transport::Endpoint::from_shared(u.clone())?
                .connect()
                .await?,
        );
    }
    let started = Instant::now();
    let (steps, failed) = crate::run_all_to_end(&channels, root, ENGINE_TASKS).await?;
    Ok(Ran {
        steps,
        failed,
        secs: started.elapsed().as_secs_f64(),
    })
}

async fn lists(rows: &mut Vec<Row>, pg: &PgServer) -> Result<()> {
    let seeded = tempfile::tempdir()?;
    let data_dir = seeded.path().join("data");
    scale::seed(&data_dir).await?;
    let sqlite = Stack::start(StackOptions {
        data_dir: Some(data_dir),
        envoy: true,
        ..Default::default()
    })
    .await?;
    let (reference, _, _) = scale::list_p99s(&sqlite.rest_url).await?;
    drop(sqlite);

    // The nodes create the schema; the tasks are then seeded in SQL.
    let cluster = Cluster::start(pg, "lists", ClusterOptions::default()).await?;
    let t = Instant::now();
    seed_postgres(&cluster.database_url).await?;
    let seeding = t.elapsed().as_secs_f64();
    let (worst, name, details) = scale::list_p99s(&cluster.rest_url).await?;
    drop(cluster);
    rows.push(Row::info(
        W,
        &format!(
            "list/filter/paginate p99 ms, {}k tasks (worst: {name})",
            scale::TASKS / 1000
        ),
        worst,
        &format!("{reference:.1} ms single-node SQLite (worst query); p99 ms by query: {details}; seeded in {seeding:.1} s"),
    ));
    Ok(())
}

/// The scale workload's 100k tasks with 10 events each, in PostgreSQL.
async fn seed_postgres(url: &str) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    let mut tx = conn.begin().await?;
    // Bulk load without per-row triggers and foreign-key checks (the rows
    // are consistent by construction); the counts are filled in after.
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO tasks (task_id, input, additional_input, status, origin, run_spec, created_at, \
           modified_at, started_at, finished_at, result, error, input_tokens, output_tokens, cost_usd, last_seq) \
         SELECT lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'), \
           'seeded task ' || i, '{\"team\":\"bench\"}', \
           CASE i % 20 WHEN 0 THEN 'failed' WHEN 1 THEN 'stopped' WHEN 2 THEN 'created' ELSE 'completed' END, \
           CASE i % 2 WHEN 0 THEN 'trae' ELSE 'agent_protocol' END, NULL, \
           (1700000000 + i) * 1000, (1700000000 + i) * 1000 + 500, (1700000000 + i) * 1000, \
           (1700000000 + i) * 1000 + 400, 'done', NULL, 1200, 300, 0.0042, $2 \
         FROM generate_series(1, $1::bigint) AS i",
    )
    .bind(scale::TASKS)
    .bind(scale::EVENTS_PER_TASK)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO events (task_id, seq, type, timestamp, body) \
         SELECT t.task_id, s, CASE s WHEN 1 THEN 'start' WHEN $1 THEN 'end' ELSE 'step' END, \
           t.created_at + s, '{\"message\":\"seeded event\",\"data\":{\"step\":' || s || '}}' \
         FROM tasks t CROSS JOIN generate_series(1, $1::bigint) AS s",
    )
    .bind(scale::EVENTS_PER_TASK)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE task_counts c SET n = s.n, input_tokens = s.i, output_tokens = s.o, cost_usd = s.c \
         FROM (SELECT status, COUNT(*) AS n, SUM(input_tokens) AS i, SUM(output_tokens) AS o, \
                      SUM(cost_usd) AS c FROM tasks GROUP BY status) s \
         WHERE c.status = s.status AND c.slot = 0",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // What autovacuum would have done by now on a table this size: the
    // visibility map lets listing pages be index-only scans.
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

const LEASE_SECS: u64 = 3;

async fn node_death(rows: &mut Vec<Row>, pg: &PgServer) -> Result<()> {
    // The model holds its answer: the run stays running on node 1.
    let llm = InstantLlm::start(5, Duration::ZERO, false).await;
    let mut cluster = Cluster::start(
        pg,
        "death",
        ClusterOptions {
            trae_config: Some(llm.trae_config(10)),
            lease_secs: Some(LEASE_SECS),
            ..Default::default()
        },
    )
    .await?;
    let mut client = crate::TraeClient::connect(cluster.nodes[0].grpc_url.clone()).await?;
    let task_id =
        crate::start_run_in(&mut client, cluster.work_root(), "node death benchmark").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while llm.requests.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            bail!("the run never called the model");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut survivor = crate::TraeClient::connect(cluster.nodes[1].grpc_url.clone()).await?;
    let killed = Instant::now();
    cluster.nodes[0].proc.kill_now();
    // Taken over: resumed by a survivor (the default `--on-interrupt
    // resume`), or failed.
    let outcome = loop {
        let status = survivor
            .get_task_status(trae::GetTaskStatusRequest {
                task_id: task_id.clone(),
            })
            .await?
            .into_inner();
        if status.messages.iter().any(|e| e.r#type == "resumed") {
            break "resumed".to_string();
        }
        if status.task_status != "running" {
            break status.task_status;
        }
        if killed.elapsed() > Duration::from_secs(LEASE_SECS + 30) {
            bail!(
                "the killed node's run was not taken over after {} s",
                LEASE_SECS + 30
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = killed.elapsed().as_secs_f64();
    llm.open();
    // The killed node, started again, ends what it left (its control groups).
    cluster.restart_node(0).await?;
    drop(cluster);
    let mut row = Row::at_most(
        W,
        "a killed node's run taken over by a survivor, s after SIGKILL",
        secs,
        (LEASE_SECS + 5) as f64,
        &format!("lease {LEASE_SECS} s (target: lease + 5 s); the run was {outcome}"),
    );
    if outcome != "resumed" {
        row.pass = Some(false);
    }
    rows.push(row);
    Ok(())
}
