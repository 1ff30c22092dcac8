//! Artifacts: a 100 MB upload (multipart, streamed) and download through
//! Envoy, with agentd's RSS growth over both. Reference: writing the same
//! bytes to the same disk with one fsync (the upload's physical limit).

use std::{io::Write, path::Path, time::Instant};

use anyhow::{Result, bail};
use futures_util::StreamExt;
use serde_json::Value;

use crate::{
    Row,
    stack::{RssSampler, Stack, StackOptions, rss},
};

const SIZE: usize = 100 * 1000 * 1000;
const MB: f64 = 1e6;

pub async fn run(rows: &mut Vec<Row>) -> Result<()> {
    let stack = Stack::start(StackOptions {
        envoy: true,
        ..Default::default()
    })
    .await?;
    let source = stack.root.path().join("payload.bin");
    let checksum = write_payload(&source)?;
    let disk = disk_write_rate(&stack.data_dir, &source)?;

    let http = reqwest::Client::new();
    let task: Value = http
        .post(format!("{}/ap/v1/agent/tasks", stack.rest_url))
        .json(&serde_json::json!({"input": "artifact benchmark"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let task_id = task["task_id"].as_str().unwrap_or_default().to_string();
    let (baseline, _) = rss(stack.agentd_pid());

    // Upload: a multipart body streamed from the file.
    let boundary = "agentd-bench-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"payload.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() + SIZE + tail.len();
    let file = tokio::fs::File::open(&source).await?;
    let body =
        futures_util::stream::once(
            async move { Ok::<_, std::io::Error>(bytes::Bytes::from(head)) },
        )
        .chain(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20))
        .chain(futures_util::stream::once(async move {
            Ok(bytes::Bytes::from(tail))
        }));
    let sampler = RssSampler::start(stack.agentd_pid());
    let started = Instant::now();
    let resp = http
        .post(format!(
            "{}/ap/v1/agent/tasks/{task_id}/artifacts",
            stack.rest_url
        ))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header("content-length", length)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("upload failed: {} {}", resp.status(), resp.text().await?);
    }
    let artifact: Value = resp.json().await?;
    let up = SIZE as f64 / MB / started.elapsed().as_secs_f64();
    let up_peak = sampler.max().await;

    // Download, checked against the source.
    let artifact_id = artifact["artifact_id"].as_str().unwrap_or_default();
    let sampler = RssSampler::start(stack.agentd_pid());
    let started = Instant::now();
    let resp = http
        .get(format!(
            "{}/ap/v1/agent/tasks/{task_id}/artifacts/{artifact_id}",
            stack.rest_url
        ))
        .send()
        .await?
        .error_for_status()?;
    let mut stream = resp.bytes_stream();
    let mut sum = Checksum::default();
    while let Some(chunk) = stream.next().await {
        sum.update(&chunk?);
    }
    let down = SIZE as f64 / MB / started.elapsed().as_secs_f64();
    let down_peak = sampler.max().await;
    let got = sum.finish();
    if got != checksum {
        bail!(
            "downloaded bytes differ from the upload ({} of {} bytes read)",
            got.1,
            checksum.1
        );
    }

    let w = "Artifacts 100 MB via Envoy";
    rows.push(Row::at_least(
        w,
        "upload MB/s",
        up,
        300.0,
        &format!("disk write+fsync {disk:.0} MB/s"),
    ));
    rows.push(Row::at_least(
        w,
        "download MB/s (bytes verified)",
        down,
        300.0,
        "",
    ));
    let growth = up_peak.max(down_peak).saturating_sub(baseline) as f64 / MB;
    rows.push(Row::at_most(
        w,
        "agentd RSS growth MB",
        growth,
        20.0,
        &format!("baseline RSS {:.0} MB", baseline as f64 / MB),
    ));
    Ok(())
}

/// A fast order-sensitive checksum (the point is catching wrong bytes, not attacks).
#[derive(Default)]
struct Checksum {
    hash: u64,
    len: usize,
    pending: Vec<u8>,
}

impl Checksum {
    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len();
        if !self.pending.is_empty() {
            let need = 8 - self.pending.len();
            let take = need.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == 8 {
                let word = u64::from_le_bytes(self.pending[..].try_into().unwrap());
                self.mix(word);
                self.pending.clear();
            }
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().unwrap()));
        }
        self.pending.extend_from_slice(words.remainder());
    }

    fn mix(&mut self, word: u64) {
        self.hash = (self.hash ^ word)
            .wrapping_mul(0x100_0000_01b3)
            .rotate_left(5);
    }

    fn finish(mut self) -> (u64, usize) {
        let rest = std::mem::take(&mut self.pending);
        for b in rest {
            self.mix(b as u64);
        }
        (self.hash, self.len)
    }
}

/// Writes SIZE pseudo-random bytes; returns their checksum.
fn write_payload(path: &Path) -> Result<(u64, usize)> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut sum = Checksum::default();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = SIZE;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            w.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len());
        f.write_all(&block[..n])?;
        sum.update(&block[..n]);
        left -= n;
    }
    f.flush()?;
    Ok(sum.finish())
}

/// Copies the payload into `dir` and fsyncs it: MB/s.
fn disk_write_rate(dir: &Path, source: &Path) -> Result<f64> {
    let data = std::fs::read(source)?;
    let target = dir.join("disk-probe.bin");
    let started = Instant::now();
    let mut f = std::fs::File::create(&target)?;
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk)?;
    }
    f.sync_all()?;
    let rate = data.len() as f64 / MB / started.elapsed().as_secs_f64();
    std::fs::remove_file(target)?;
    Ok(rate)
}
