//! Engine overhead: 100 concurrent Trae runs against a model that answers at
//! once with a no-op tool call. Steps/s in total, and agentd's own time per
//! step: the step's wall time minus the model call and the tool calls, from
//! agentd's `agentd_step_overhead_seconds` histogram at /metrics. agentd's CPU
//! time per step (everything: HTTP client, JSON, SQLite, streams) is shown
//! alongside.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{
    Row,
    llm::InstantLlm,
    stack::{Stack, StackOptions, cpu_time},
};

const TASKS: usize = 100;
/// Tool-calling turns per task; the `task_done` turn makes one more.
const TURNS: usize = 60;

pub async fn run(rows: &mut Vec<Row>) -> Result<()> {
    let llm = InstantLlm::start(TURNS, Duration::ZERO, true).await;
    let stack = Stack::start(StackOptions {
        max_running_tasks: TASKS,
        trae_config: Some(llm.trae_config(TURNS + 5)),
        ..Default::default()
    })
    .await?;
    let channels = super::reads::channels(&stack.grpc_url, 4).await?;
    // Rounds on one stack, the median reported: a 2-core VM shared with
    // other work moves one round's figures by ±15%.
    let mut rounds = Vec::new();
    let (mut steps, mut calls_before) = (0u64, 0);
    for _ in 0..ROUNDS {
        let round = run_round(&stack, &channels).await?;
        steps = round.steps;
        let calls = llm.requests.load(std::sync::atomic::Ordering::Relaxed);
        if round.failed > 0 {
            bail!("{} of {TASKS} tasks did not complete", round.failed);
        }
        if calls - calls_before != round.steps {
            bail!(
                "{} model calls for {} steps",
                calls - calls_before,
                round.steps
            );
        }
        calls_before = calls;
        rounds.push(round);
    }
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (rate, rate_lo, rate_hi) = median(&|r| r.steps as f64 / r.took);
    let (cpu_per_step, cpu_lo, cpu_hi) = median(&|r| r.cpu_us / r.steps.max(1) as f64);
    let overhead = step_overhead_p99(&stack.grpc_url).await?;

    let w = "Engine, 100 concurrent tasks";
    rows.push(Row::at_least(
        w,
        "steps/s in total",
        rate,
        5000.0,
        &format!(
            "median of {ROUNDS} rounds ({rate_lo:.0}–{rate_hi:.0}) of {steps} steps, one model call each, every task completed"
        ),
    ));
    rows.push(Row::at_most(
        w,
        "agentd CPU µs per step (all work, mean)",
        cpu_per_step,
        150.0,
        &format!("median of {ROUNDS} rounds ({cpu_lo:.0}–{cpu_hi:.0}): HTTP client, JSON, events, SQLite, streams"),
    ));
    rows.push(Row::at_most(
        w,
        "agentd overhead per step p99 ms (excl. LLM, tools)",
        overhead * 1000.0,
        1.0,
        &format!("agentd CPU {cpu_per_step:.0} µs per step (all work, median round's mean)"),
    ));
    Ok(())
}

/// Rounds of the workload on one stack.
const ROUNDS: usize = 3;

struct Round {
    steps: u64,
    failed: usize,
    took: f64,
    cpu_us: f64,
}

/// `TASKS` runs at once, each to its end.
async fn run_round(stack: &Stack, channels: &[tonic::transport::Channel]) -> Result<Round> {
    let cpu_before = cpu_time(stack.agentd_pid());
    let started = Instant::now();
    let (steps, failed) = crate::run_all_to_end(channels, stack.root.path(), TASKS).await?;
    Ok(Round {
        steps,
        failed,
        took: started.elapsed().as_secs_f64(),
        cpu_us: (cpu_time(stack.agentd_pid()) - cpu_before).as_secs_f64() * 1e6,
    })
}

/// p99 of agentd's step-overhead histogram, interpolated inside its bucket.
async fn step_overhead_p99(base: &str) -> Result<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with("agentd_step_overhead_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        bail!("agentd_step_overhead_seconds has no observations");
    }
    let want = total * 0.99;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= want {
            if le.is_infinite() {
                return Ok(prev.0);
            }
            let frac = (want - prev.1) / (count - prev.1).max(1e-9);
            return Ok(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    Ok(prev.0)
}
