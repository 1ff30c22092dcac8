//! Reads: REST through Envoy against Envoy's own `direct_response`, and gRPC
//! `GetTask` against an empty RPC (health `Check`) of the same server.

use std::time::Duration;

use anyhow::Result;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    Row,
    llm::InstantLlm,
    load::{self, Summary},
    stack::{Stack, StackOptions},
};
use agentd::proto::ap;

const SECS: u32 = 5;
const CONNS: u32 = 64;

pub async fn run(rows: &mut Vec<Row>) -> Result<()> {
    let llm = InstantLlm::start(3, Duration::ZERO, true).await;
    let stack = Stack::start(StackOptions {
        envoy: true,
        trae_config: Some(llm.trae_config(10)),
        ..Default::default()
    })
    .await?;
    // A finished Trae run (its status carries ~20 messages) is what both
    // endpoints read: a realistic task, not an empty row.
    let mut client = crate::TraeClient::connect(stack.grpc_url.clone()).await?;
    let task_id = crate::run_to_end(&mut client, &stack, "benchmark task")
        .await?
        .task_id;
    let direct = format!("{}/bench/direct", stack.rest_url);
    let ap_task = format!("{}/ap/v1/agent/tasks/{task_id}", stack.rest_url);
    let trae_status = format!("{}/api/tasks/{task_id}/status", stack.rest_url);

    // Throughput: wrk, same connections and duration for all three.
    let reference = load::wrk(&direct, SECS, CONNS, None)?;
    // The cheapest call that crosses the transcoder to agentd and back.
    let health = load::wrk(&format!("{}/api/health", stack.rest_url), SECS, CONNS, None)?;
    rows.push(
        Row::info(
            "REST reads via Envoy",
            &format!("GET /api/health req/s ({CONNS} conns): transcoded, no storage"),
            health.rate(),
            &format!(
                "{:.0}% of direct_response",
                100.0 * health.rate() / reference.rate()
            ),
        )
        .with_errors(health.errors),
    );
    for (name, url) in [
        ("GET /ap/v1/agent/tasks/{id}", &ap_task),
        ("GET /api/tasks/{id}/status", &trae_status),
    ] {
        let s = load::wrk(url, SECS, CONNS, None)?;
        rows.push(
            Row::ratio(
                "REST reads via Envoy",
                &format!("{name} req/s ({CONNS} conns)"),
                s.rate(),
                reference.rate(),
                0.5,
                "Envoy direct_response req/s",
            )
            .with_errors(s.errors),
        );
    }

    // Latency at a fixed 1,000 req/s.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let fixed = |url: String| {
        let client = client.clone();
        load::open_loop(1000.0, 5.0, move |_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                match client.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
    };
    let reference = fixed(direct.clone()).await;
    for (name, url) in [
        ("GET /ap/v1/agent/tasks/{id}", &ap_task),
        ("GET /api/tasks/{id}/status", &trae_status),
    ] {
        let s = fixed(url.clone()).await;
        rows.push(
            Row::at_most(
                "REST reads via Envoy",
                &format!("{name} p99 ms at 1,000 req/s"),
                s.p99_ms,
                5.0,
                &format!("{:.2} ms direct_response p99", reference.p99_ms),
            )
            .with_errors(s.errors),
        );
    }

    // gRPC straight to agentd.
    let channels = channels(&stack.grpc_url, 4).await?;
    let empty = {
        let channels = channels.clone();
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
    };
    let get = {
        let channels = channels.clone();
        let task_id = task_id.clone();
        load::closed_loop(64, SECS as f64, move |w| {
            let mut c = ap::agent_service_client::AgentServiceClient::new(
                channels[w % channels.len()].clone(),
            );
            let req = ap::GetTaskRequest {
                task_id: task_id.clone(),
            };
            async move { c.get_task(req).await.is_ok() }
        })
        .await
    };
    rows.push(grpc_row("GetTask calls/s (64 in flight)", &get, &empty));
    rows.push(Row::info(
        "gRPC reads direct",
        "GetTask p99 ms (64 in flight)",
        get.p99_ms,
        &format!("{:.2} ms empty RPC p99", empty.p99_ms),
    ));
    Ok(())
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
