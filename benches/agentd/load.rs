//! Load generators: wrk for HTTP throughput, and in-process drivers for
//! closed-loop (as fast as N workers go) and open-loop (fixed rate) load.

use std::{
    future::Future,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub ok: u64,
    pub errors: u64,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }

    fn from_histogram(h: &Histogram<u64>, ok: u64, errors: u64, secs: f64) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            ok,
            errors,
            secs,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    // Microseconds, up to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Runs wrk (2 threads, `conns` connections) and reads its summary.
pub fn wrk(url: &str, secs: u32, conns: u32, script: Option<&Path>) -> Result<Summary> {
    let bin = std::env::var("WRK_BIN").unwrap_or_else(|_| "wrk".into());
    let mut cmd = Command::new(bin);
    cmd.args([
        "-t2",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (install it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<Summary> {
    let mut s = Summary::default();
    let mut total = 0u64;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [n, "requests", "in", secs, ..] => {
                total = n.parse()?;
                s.secs = secs.trim_end_matches(',').trim_end_matches('s').parse()?;
            }
            ["50%", v] => s.p50_ms = wrk_ms(v)?,
            ["99%", v] => s.p99_ms = wrk_ms(v)?,
            ["Latency", _avg, _stdev, max, ..] => s.max_ms = wrk_ms(max)?,
            ["Non-2xx", "or", "3xx", "responses:", n] => s.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                for w in rest.iter().map(|w| w.trim_end_matches(',')) {
                    s.errors += w.parse::<u64>().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    if s.secs == 0.0 {
        bail!("unexpected wrk output:\n{text}");
    }
    s.ok = total.saturating_sub(s.errors);
    Ok(s)
}

fn wrk_ms(v: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown wrk duration {v}")
    };
    Ok(num.parse::<f64>()? * scale)
}

/// `workers` loops calling `call` back to back for `secs`; latency per call.
pub async fn closed_loop<F, Fut>(workers: usize, secs: f64, call: F) -> Summary
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..workers {
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            let mut h = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < until {
                let t = Instant::now();
                if call(w).await {
                    ok += 1;
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                } else {
                    errors += 1;
                }
            }
            (h, ok, errors)
        }));
    }
    let mut all = histogram();
    let (mut ok, mut errors) = (0, 0);
    for handle in handles {
        let (h, o, e) = handle.await.expect("load worker");
        all.add(h).expect("same histogram bounds");
        ok += o;
        errors += e;
    }
    Summary::from_histogram(&all, ok, errors, started.elapsed().as_secs_f64())
}

/// Calls `call` at a fixed rate for `secs`, each call on its own task;
/// latency counts from when the call was due, so a stall is not hidden.
pub async fn open_loop<F, Fut>(rate: f64, secs: f64, call: F) -> Summary
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let results = Arc::new(Mutex::new((histogram(), 0u64, 0u64)));
    let total = (rate * secs) as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let started = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + period * i as u32;
        tokio::time::sleep_until(due).await;
        let fut = call(i);
        let results = results.clone();
        handles.push(tokio::spawn(async move {
            let ok = fut.await;
            let mut r = results.lock().unwrap();
            if ok {
                let _ = r.0.record(due.elapsed().as_micros().max(1) as u64);
                r.1 += 1;
            } else {
                r.2 += 1;
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let r = results.lock().unwrap();
    Summary::from_histogram(&r.0, r.1, r.2, secs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_wrk() {
        let text = "Running 5s test @ http://x\n  2 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     2.10ms    1.00ms  40.00ms   90.00%\n  Latency Distribution\n     50%    1.90ms\n     75%    2.50ms\n     90%    3.00ms\n     99%  812.00us\n  150000 requests in 5.00s, 20.00MB read\n  Non-2xx or 3xx responses: 10\nRequests/sec:  30000.00\n";
        let s = super::parse_wrk(text).unwrap();
        assert_eq!(s.ok, 149_990);
        assert_eq!(s.errors, 10);
        assert!((s.p99_ms - 0.812).abs() < 1e-9);
        assert!((s.max_ms - 40.0).abs() < 1e-9);
    }
}
