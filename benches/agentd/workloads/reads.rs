//! Reads: REST through Envoy against Envoy's own `direct_response`, and gRPC
//! `GetTask` against an empty RPC (health `Check`) of the same server.
//!
//! The reads spread over many finished Trae runs (as many clients polling
//! their own tasks would), not one hot row. Context rows show what the
//! target compares against: Envoy proxying to an upstream that answers at
//! once, the cheapest transcoded call, the CPU each process spends per
//! request, and gRPC reads with agentd's read cache turned off.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Result, bail};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    Row,
    llm::InstantLlm,
    load::{self, Summary},
    stack::{Stack, StackOptions, cpu_time, reference_upstream},
};
use agentd::proto::ap;

const SECS: u32 = 5;
const CONNS: u32 = 64;
/// Finished runs the reads spread over.
const TASKS: usize = 200;
const W: &str = "REST reads via Envoy";

pub async fn run(rows: &mut Vec<Row>) -> Result<()> {
    let llm = InstantLlm::start(3, Duration::ZERO, true).await;
    let (upstream_port, upstream) = reference_upstream().await?;
    let data = tempfile::Builder::new().prefix("agentd-reads").tempdir()?;
    let stack = Arc::new(
        Stack::start(StackOptions {
            envoy: true,
            data_dir: Some(data.path().join("data")),
            max_running_tasks: 20,
            trae_config: Some(llm.trae_config(10)),
            proxy_upstream: Some(upstream_port),
            ..Default::default()
        })
        .await?,
    );
    let task_ids = finished_runs(&stack).await?;

    rest_throughput(rows, &stack, &task_ids).await?;
    rest_latency(rows, &stack, &task_ids).await?;
    let grpc = channels(&stack.grpc_url, 4).await?;
    let (empty, empty_cpu) = grpc_empty(&stack, &grpc).await;
    let (get, get_cpu) = grpc_get_task(&stack, &grpc, &task_ids).await;
    rows.push(
        grpc_row("GetTask calls/s (64 in flight)", &get, &empty).with_note(&format!(
            "agentd CPU µs/call: GetTask {get_cpu:.0}, empty {empty_cpu:.0}"
        )),
    );
    rows.push(Row::info(
        "gRPC reads direct",
        "GetTask p99 ms (64 in flight)",
        get.p99_ms,
        &format!("{:.2} ms empty RPC p99", empty.p99_ms),
    ));
    drop(stack);
    upstream.abort();

    // The same database, with agentd's read cache off: every read is SQLite.
    let stack = Stack::start(StackOptions {
        data_dir: Some(data.path().join("data")),
        read_cache_mb: Some(0),
        ..Default::default()
    })
    .await?;
    let grpc = channels(&stack.grpc_url, 4).await?;
    let (empty, _) = grpc_empty(&stack, &grpc).await;
    let (get, get_cpu) = grpc_get_task(&stack, &grpc, &task_ids).await;
    rows.push(
        Row::info(
            "gRPC reads direct",
            "GetTask calls/s, read cache off (every read from SQLite)",
            get.rate(),
            &format!(
                "{:.0}% of {:.0} empty RPC calls/s; agentd CPU µs/call {get_cpu:.0}",
                100.0 * get.rate() / empty.rate().max(1e-9),
                empty.rate()
            ),
        )
        .with_errors(get.errors),
    );
    Ok(())
}

/// Finishes [`TASKS`] Trae runs of 3 steps (each status carries ~20
/// messages): realistic tasks, not empty rows.
async fn finished_runs(stack: &Arc<Stack>) -> Result<Arc<Vec<String>>> {
    let channels = channels(&stack.grpc_url, 4).await?;
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut client = crate::TraeClient::new(channels[i % channels.len()].clone());
        let stack = stack.clone();
        runs.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..TASKS / 20 {
                let end = crate::run_to_end(&mut client, &stack, "benchmark task").await?;
                if !end.completed {
                    bail!("run {} did not complete", end.task_id);
                }
                ids.push(end.task_id);
            }
            Ok(ids)
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = runs.join_next().await {
        ids.extend(r??);
    }
    Ok(Arc::new(ids))
}

/// The request path that reads (or stands in for a read of) a task.
type TaskPath = fn(&str) -> String;

/// The reads held against the target: the figure's name, and its path.
const READS: [(&str, TaskPath); 2] = [
    ("GET /ap/v1/agent/tasks/{id}", |id| {
        format!("/ap/v1/agent/tasks/{id}")
    }),
    ("GET /api/tasks/{id}/status", |id| {
        format!("/api/tasks/{id}/status")
    }),
];

/// Throughput with wrk: the same connections, duration and path-picking
/// script for every figure, and the CPU each process spent per request.
async fn rest_throughput(rows: &mut Vec<Row>, stack: &Stack, ids: &[String]) -> Result<()> {
    let paths = |name: &str, path: &dyn Fn(&str) -> String| {
        let file = stack.root.path().join(format!("{name}.paths"));
        let text: String = ids.iter().map(|id| path(id) + "\n").collect();
        std::fs::write(&file, text).map(|_| file)
    };
    let direct = paths("direct", &|id| format!("/bench/direct?task={id}"))?;
    let (reference, cpu) = wrk_with_cpu(stack, &direct)?;
    rows.push(
        Row::info(
            W,
            &format!("Envoy direct_response req/s ({CONNS} conns)"),
            reference.rate(),
            &cpu,
        )
        .with_errors(reference.errors),
    );
    let context: [(&str, &str, TaskPath); 2] = [
        // What any upstream costs: Envoy proxying to one that answers at once.
        (
            "proxy",
            "Envoy proxying to an instant upstream (HTTP/2, no transcoder) req/s",
            |id| format!("/bench/proxy?task={id}"),
        ),
        // The cheapest call that crosses the transcoder to agentd and back.
        (
            "health",
            "GET /api/health req/s: transcoded, no storage",
            |id| format!("/api/health?task={id}"),
        ),
    ];
    for (name, figure, path) in context {
        let (s, cpu) = wrk_with_cpu(stack, &paths(name, &path)?)?;
        let share = 100.0 * s.rate() / reference.rate().max(1e-9);
        rows.push(
            Row::info(
                W,
                figure,
                s.rate(),
                &format!("{share:.0}% of direct_response; {cpu}"),
            )
            .with_errors(s.errors),
        );
    }
    for (i, (name, path)) in READS.into_iter().enumerate() {
        let (s, cpu) = wrk_with_cpu(stack, &paths(&format!("read{i}"), &path)?)?;
        rows.push(
            Row::ratio(
                W,
                &format!("{name} req/s ({CONNS} conns, {TASKS} tasks)"),
                s.rate(),
                reference.rate(),
                0.5,
                "Envoy direct_response req/s",
            )
            .with_note(&cpu)
            .with_errors(s.errors),
        );
    }
    Ok(())
}

/// p99 at a fixed 1,000 req/s, cycling through the tasks.
async fn rest_latency(rows: &mut Vec<Row>, stack: &Stack, ids: &[String]) -> Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let fixed = |urls: Vec<String>| {
        let client = client.clone();
        load::open_loop(1000.0, 5.0, move |i| {
            let (client, url) = (client.clone(), urls[i as usize % urls.len()].clone());
            async move {
                match client.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
    };
    let reference = fixed(vec![format!("{}/bench/direct", stack.rest_url)]).await;
    for (name, path) in READS {
        let urls = ids
            .iter()
            .map(|id| format!("{}{}", stack.rest_url, path(id)))
            .collect();
        let s = fixed(urls).await;
        rows.push(
            Row::at_most(
                W,
                &format!("{name} p99 ms at 1,000 req/s"),
                s.p99_ms,
                5.0,
                &format!("{:.2} ms direct_response p99", reference.p99_ms),
            )
            .with_errors(s.errors),
        );
    }
    Ok(())
}

/// The empty RPC: calls and agentd's CPU µs per call.
async fn grpc_empty(stack: &Stack, channels: &[tonic::transport::Channel]) -> (Summary, f64) {
    let channels = channels.to_vec();
    with_cpu(stack, async move {
        load::closed_loop(64, SECS as f64, move |w| {
            let mut c = HealthClient::new(channels[w % channels.len()].clone());
            async move {
                c.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
            }
        })
        .await
    })
    .await
}

/// GetTask over the tasks in turn: calls and agentd's CPU µs per call.
async fn grpc_get_task(
    stack: &Stack,
    channels: &[tonic::transport::Channel],
    ids: &Arc<Vec<String>>,
) -> (Summary, f64) {
    let (channels, ids) = (channels.to_vec(), ids.clone());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    with_cpu(stack, async move {
        load::closed_loop(64, SECS as f64, move |w| {
            let mut c = ap::agent_service_client::AgentServiceClient::new(
                channels[w % channels.len()].clone(),
            );
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let req = ap::GetTaskRequest {
                task_id: ids[i % ids.len()].clone(),
            };
            async move { c.get_task(req).await.is_ok() }
        })
        .await
    })
    .await
}

async fn with_cpu(stack: &Stack, run: impl Future<Output = Summary>) -> (Summary, f64) {
    let pid = stack.agentd_pid();
    let before = cpu_time(pid);
    let s = run.await;
    let cpu = (cpu_time(pid) - before).as_secs_f64() * 1e6 / (s.ok + s.errors).max(1) as f64;
    (s, cpu)
}

/// wrk with a script that cycles through the paths in `paths_file`, and the
/// CPU time Envoy and agentd spent per request.
fn wrk_with_cpu(stack: &Stack, paths_file: &Path) -> Result<(Summary, String)> {
    let script = paths_file.with_extension("lua");
    std::fs::write(
        &script,
        format!(
            "local paths = {{}}\nfor line in io.lines({:?}) do paths[#paths + 1] = line end\n\
             local i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(nil, paths[i])\nend\n",
            paths_file.display().to_string()
        ),
    )?;
    let envoy = stack.envoy_pid().expect("the reads stack runs Envoy");
    let agentd = stack.agentd_pid();
    let before = (cpu_time(envoy), cpu_time(agentd));
    let s = load::wrk(&stack.rest_url, SECS, CONNS, Some(&script))?;
    let n = (s.ok + s.errors).max(1) as f64;
    let per = |now: Duration, then: Duration| (now - then).as_secs_f64() * 1e6 / n;
    let note = format!(
        "CPU µs/req: Envoy {:.0}, agentd {:.0}",
        per(cpu_time(envoy), before.0),
        per(cpu_time(agentd), before.1)
    );
    Ok((s, note))
}

fn grpc_row(figure: &str, s: &Summary, empty: &Summary) -> Row {
    Row::ratio(
        "gRPC reads direct",
        figure,
        s.rate(),
        empty.rate(),
        0.5,
        "empty RPC (health Check) calls/s",
    )
    .with_errors(s.errors)
}

pub async fn channels(url: &str, n: usize) -> Result<Vec<tonic::transport::Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            tonic::transport::Endpoint::from_shared(url.to_string())?
                .connect()
                .await?,
        );
    }
    Ok(out)
}
