//! agentd's benchmark suite: `bench/run` (see README.md, "Benchmarks").
//!
//! Every workload runs against the release binary and the real Envoy on free
//! 127.0.0.1 ports, and is reported next to a reference measured in the same
//! run on the same machine (ratios hold on a noisy machine; absolute numbers
//! drift). The table is printed and written to bench/RESULTS.md.
//!
//! Usage: cargo bench --bench agentd [-- WORKLOAD...]   (reads, writes,
//! fanout, artifacts, engine, scale, postgres; default all)

mod cluster;
mod llm;
mod load;
mod report;
mod stack;
mod workloads;

use std::{path::Path, time::Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;

use agentd::proto::trae;
pub use report::Row;
use stack::Stack;

pub type TraeClient = trae::trae_service_client::TraeServiceClient<tonic::transport::Channel>;

const WORKLOADS: &[&str] = &[
    "reads",
    "writes",
    "fanout",
    "artifacts",
    "engine",
    "scale",
    "postgres",
];

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; anything else names workloads.
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for c in &chosen {
        if !WORKLOADS.contains(&c.as_str()) {
            bail!("unknown workload {c:?}; choose from {WORKLOADS:?}");
        }
    }
    // reqwest is built without a crypto provider (see crates/engine); plain
    // HTTP still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = Instant::now();
        let mut rows = Vec::new();
        for name in WORKLOADS {
            if !chosen.is_empty() && !chosen.iter().any(|c| c == name) {
                continue;
            }
            eprintln!("== {name}");
            let t = Instant::now();
            let result = match *name {
                "reads" => workloads::reads::run(&mut rows).await,
                "writes" => workloads::writes::run(&mut rows).await,
                "fanout" => workloads::fanout::run(&mut rows).await,
                "artifacts" => workloads::artifacts::run(&mut rows).await,
                "engine" => workloads::engine::run(&mut rows).await,
                "scale" => workloads::scale::run(&mut rows).await,
                "postgres" => workloads::postgres::run(&mut rows).await,
                _ => unreachable!(),
            };
            if let Err(e) = result {
                rows.push(Row::failed(name, &format!("{e:#}")));
            }
            eprintln!("   {name} took {:.1} s", t.elapsed().as_secs_f64());
        }
        let table = report::render(&rows, started.elapsed());
        println!("{table}");
        let all = chosen.is_empty();
        if all {
            let path = Path::new(stack::REPO).join("bench/RESULTS.md");
            std::fs::write(&path, table).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("written to {}", path.display());
        }
        Ok(())
    })
}

/// Starts a Trae run in a new working directory under the stack's own.
pub async fn start_run(client: &mut TraeClient, stack: &Stack, task: &str) -> Result<String> {
    start_run_in(client, stack.root.path(), task).await
}

/// Starts a Trae run in a new working directory under `root`.
pub async fn start_run_in(client: &mut TraeClient, root: &Path, task: &str) -> Result<String> {
    let work = root.join(format!("work-{}", uuid::Uuid::new_v4()));
    Ok(client
        .run(trae::RunRequest {
            task: task.into(),
            working_dir: work.display().to_string(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .task_id)
}

/// What a run's event stream showed by its `end`.
pub struct RunEnd {
    pub task_id: String,
    pub steps: u32,
    pub completed: bool,
}

/// `n` Trae runs at once under `root`, spread over `channels`, each followed
/// to its end: the steps they took and how many did not complete.
pub async fn run_all_to_end(
    channels: &[tonic::transport::Channel],
    root: &Path,
    n: usize,
) -> Result<(u64, usize)> {
    let mut runs = Vec::new();
    for i in 0..n {
        let mut client = TraeClient::new(channels[i % channels.len()].clone());
        let root = root.to_path_buf();
        runs.push(tokio::spawn(async move {
            run_to_end_in(&mut client, &root, "engine benchmark").await
        }));
    }
    let (mut steps, mut failed) = (0u64, 0);
    for r in runs {
        let end = r.await??;
        steps += u64::from(end.steps);
        failed += usize::from(!end.completed);
    }
    Ok((steps, failed))
}

/// Starts a Trae run and follows its event stream to `end`.
pub async fn run_to_end(client: &mut TraeClient, stack: &Stack, task: &str) -> Result<RunEnd> {
    run_to_end_in(client, stack.root.path(), task).await
}

/// As [`run_to_end`], with the working directory under `root`.
pub async fn run_to_end_in(client: &mut TraeClient, root: &Path, task: &str) -> Result<RunEnd> {
    let task_id = start_run_in(client, root, task).await?;
    let mut events = client
        .stream_task(trae::StreamTaskRequest {
            task_id: task_id.clone(),
            after_seq: None,
        })
        .await?
        .into_inner();
    let (mut steps, mut completed) = (0, false);
    while let Some(e) = events.next().await {
        match e?.r#type.as_str() {
            "step" => steps += 1,
            "complete" => completed = true,
            "end" => {
                return Ok(RunEnd {
                    task_id,
                    steps,
                    completed,
                });
            }
            _ => {}
        }
    }
    bail!("the event stream of {task_id} ended before `end`")
}
