//! Fan-out: 1,000 SSE readers through Envoy, 100 WebSocket readers through
//! Envoy and 100 gRPC stream readers straight to agentd, all on one task
//! while it emits 10,000 events. Every reader must see every event in order;
//! delivery latency is the reader's clock minus the event's timestamp (set
//! when agentd appended it, before it was stored).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};

use crate::{
    Row,
    llm::InstantLlm,
    load,
    stack::{RssSampler, Stack, StackOptions, rss},
};
use agentd::proto::trae;

const SSE: usize = 1000;
const WS: usize = 100;
const GRPC: usize = 100;
/// Tool calls per model turn: 2 events each, plus 3 per turn (step,
/// llm_response, usage): 11 events a turn, 10,000 events in 910 turns.
const CALLS_PER_TURN: usize = 4;
const TURNS: usize = 910;
/// A pause before each model answer: the task emits about 250 events/s
/// (10,000 in ~40 s), a very busy agent; with 1,200 readers that is 300,000
/// deliveries/s.
const PACE: Duration = Duration::from_millis(44);

/// What one reader saw: (seq, receive time in ms since the epoch).
pub type Seen = Vec<(u32, f64)>;

pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

pub async fn run(rows: &mut Vec<Row>) -> Result<()> {
    raise_fd_limit();
    let llm = InstantLlm::start_with_calls(TURNS, CALLS_PER_TURN, PACE, false).await;
    let stack = Stack::start(StackOptions {
        envoy: true,
        trae_config: Some(llm.trae_config(TURNS + 10)),
        ..Default::default()
    })
    .await?;
    let mut client = crate::TraeClient::connect(stack.grpc_url.clone()).await?;
    let task_id = crate::start_run(&mut client, &stack, "fan-out benchmark").await?;

    // Everyone connects and reads the history so far; then the model answers.
    let ready = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for _ in 0..SSE {
        let url = format!("{}/api/tasks/{task_id}/stream", stack.rest_url);
        readers.push(tokio::spawn(sse_reader(http.clone(), url, ready.clone())));
    }
    for _ in 0..WS {
        let url = format!(
            "{}/ap/v1/agent/tasks/{task_id}/ws",
            stack.rest_url.replace("http", "ws")
        );
        readers.push(tokio::spawn(ws_reader(url, ready.clone())));
    }
    let channels = super::reads::channels(&stack.grpc_url, 4).await?;
    let ts: Arc<tokio::sync::Mutex<HashMap<u32, f64>>> = Default::default();
    for i in 0..GRPC {
        let channel = channels[i % channels.len()].clone();
        readers.push(tokio::spawn(grpc_reader(
            channel,
            task_id.clone(),
            ready.clone(),
            (i == 0).then(|| ts.clone()),
        )));
    }
    // Every reader has the history so far (the model holds the run); a
    // reader that failed to connect ends the workload with its error.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < readers.len() {
        if let Some(i) = readers.iter().position(|r| r.is_finished()) {
            let failed = readers.swap_remove(i).await?;
            bail!("a reader ended before the run started: {:?}", failed.err());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "only {} of {} readers connected",
                ready.load(Ordering::Relaxed),
                readers.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sampler = RssSampler::start(stack.agentd_pid());
    let envoy_sampler = stack.envoy_pid().map(RssSampler::start);
    let opened = std::time::Instant::now();
    let open_ms = now_ms();
    llm.open();

    let mut seen = Vec::new();
    for r in readers {
        seen.push(r.await??);
    }
    let took = opened.elapsed().as_secs_f64();
    let agentd_peak = sampler.max().await;
    let envoy_peak = match envoy_sampler {
        Some(s) => s.max().await,
        None => 0,
    };
    let (_, agentd_hwm) = rss(stack.agentd_pid());

    // Every reader: consecutive seqs through `end`, nothing missing.
    let ts = ts.lock().await;
    let last = ts.keys().copied().max().unwrap_or(0);
    let mut broken = 0;
    let mut latencies = [load::histogram(), load::histogram(), load::histogram()];
    for (i, s) in seen.iter().enumerate() {
        let kind = if i < SSE {
            0
        } else if i < SSE + WS {
            1
        } else {
            2
        };
        let in_order = s.windows(2).all(|w| w[1].0 == w[0].0 + 1);
        if !in_order || s.last().map(|e| e.0) != Some(last) {
            broken += 1;
        }
        for &(seq, at) in s {
            // Only events appended after the model was let go: live deliveries.
            if let Some(t) = ts.get(&seq).filter(|t| **t >= open_ms.floor() - 1.0) {
                let _ = latencies[kind].record(((at - t).max(0.001) * 1000.0) as u64);
            }
        }
    }
    let events = last as f64;
    let deliveries: usize = seen.iter().map(Vec::len).sum();
    let p99 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    let mut all = load::histogram();
    for h in &latencies {
        all.add(h).ok();
    }
    let readers = SSE + WS + GRPC;
    rows.push(Row {
        measured: format!(
            "{} of {readers} readers complete and in order",
            readers - broken
        ),
        target: "all".into(),
        reference: format!("{events:.0} events, {deliveries} deliveries in {took:.1} s"),
        pass: Some(broken == 0 && events >= 10_000.0),
        ..Row::info(
            "Fan-out 1,000 SSE + 100 WS + 100 gRPC",
            "ordered, complete delivery",
            0.0,
            "",
        )
    });
    rows.push(Row::at_most(
        "Fan-out 1,000 SSE + 100 WS + 100 gRPC",
        "delivery latency p99 ms (all readers)",
        p99(&all),
        100.0,
        &format!(
            "SSE {:.1} / WS {:.1} / gRPC {:.1} ms p99; {:.0} events/s emitted",
            p99(&latencies[0]),
            p99(&latencies[1]),
            p99(&latencies[2]),
            events / took
        ),
    ));
    rows.push(Row::at_most(
        "Fan-out 1,000 SSE + 100 WS + 100 gRPC",
        "agentd peak RSS MB",
        agentd_peak.max(agentd_hwm) as f64 / 1e6,
        150.0,
        &format!("Envoy peak RSS {:.0} MB", envoy_peak as f64 / 1e6),
    ));
    drop(stack);
    Ok(())
}

pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Reads an SSE stream through `end`; the seq comes from the JSON text
/// without a full parse (the reader must not be the bottleneck).
pub async fn sse_reader(
    http: reqwest::Client,
    url: String,
    ready: Arc<AtomicUsize>,
) -> Result<Seen> {
    let resp = http.get(&url).send().await?.error_for_status()?;
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut seen = Seen::with_capacity(10_100);
    let mut waited = false;
    loop {
        let chunk = match body.next().await {
            Some(c) => c?,
            None => bail!("SSE stream closed before `end`"),
        };
        let at = now_ms();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let kind = field_str(data, "\"type\":\"");
            if kind == Some("heartbeat") {
                continue;
            }
            let seq = field_num(data, "\"seq\":").unwrap_or(0);
            seen.push((seq, at));
            if kind == Some("end") {
                return Ok(seen);
            }
        }
        // History replayed (the run waits for the model): report ready once.
        if !waited && !seen.is_empty() {
            waited = true;
            ready.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn ws_reader(url: String, ready: Arc<AtomicUsize>) -> Result<Seen> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let mut seen = Seen::with_capacity(10_100);
    let mut waited = false;
    while let Some(msg) = ws.next().await {
        let at = now_ms();
        let tokio_tungstenite::tungstenite::Message::Text(text) = msg? else {
            continue;
        };
        let seq = field_num(&text, "\"seq\":").unwrap_or(0);
        seen.push((seq, at));
        if field_str(&text, "\"event\":\"") == Some("end") {
            let _ = ws.close(None).await;
            return Ok(seen);
        }
        if !waited {
            waited = true;
            ready.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    bail!("WebSocket closed before `end`")
}

pub async fn grpc_reader(
    channel: tonic::transport::Channel,
    task_id: String,
    ready: Arc<AtomicUsize>,
    timestamps: Option<Arc<tokio::sync::Mutex<HashMap<u32, f64>>>>,
) -> Result<Seen> {
    let mut client = crate::TraeClient::new(channel);
    let mut stream = client
        .stream_task(trae::StreamTaskRequest {
            task_id,
            after_seq: None,
        })
        .await?
        .into_inner();
    let mut seen = Seen::with_capacity(10_100);
    let mut own = HashMap::new();
    let mut waited = false;
    while let Some(event) = stream.next().await {
        let event = event?;
        let at = now_ms();
        if event.r#type == "heartbeat" {
            continue;
        }
        seen.push((event.seq, at));
        own.insert(event.seq, event.timestamp * 1000.0);
        if event.r#type == "end" {
            if let Some(ts) = timestamps {
                *ts.lock().await = own;
            }
            return Ok(seen);
        }
        if !waited {
            waited = true;
            ready.fetch_add(1, Ordering::Relaxed);
        }
    }
    bail!("gRPC stream ended before `end`")
}

fn field_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

fn field_num(text: &str, key: &str) -> Option<u32> {
    let start = text.find(key)? + key.len();
    let digits: String = text[start..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
