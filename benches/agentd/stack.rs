//! The processes under test: agentd (release build) and Envoy, on free
//! 127.0.0.1 ports, each stopped by its own PID when dropped.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const AGENTD_BIN: &str = env!("CARGO_BIN_EXE_agentd");

/// The agentd binary under test: `BENCH_AGENTD_BIN` (to measure an older
/// build in the same run as this one), else the one cargo built.
pub fn agentd_bin() -> String {
    std::env::var("BENCH_AGENTD_BIN").unwrap_or_else(|_| AGENTD_BIN.to_string())
}
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A child process, ended (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a node lost to a crash would end.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
pub struct StackOptions {
    /// Reuse this data directory (the scale workload seeds one).
    pub data_dir: Option<PathBuf>,
    pub envoy: bool,
    pub max_running_tasks: usize,
    /// The default Trae config (YAML), written into the stack's directory.
    pub trae_config: Option<String>,
    /// agentd's `--read-cache-mb`; None: its default.
    pub read_cache_mb: Option<u64>,
    /// Envoy also proxies `/bench/proxy` to this 127.0.0.1 port (HTTP/2,
    /// no transcoder), like its routes to agentd.
    pub proxy_upstream: Option<u16>,
    /// More `agentd serve` flags (the cluster adds its database and node id).
    pub extra_args: Vec<String>,
}

impl Default for StackOptions {
    /// agentd's own defaults (5 runs at once), no Envoy, no model.
    fn default() -> Self {
        Self {
            data_dir: None,
            envoy: false,
            max_running_tasks: 5,
            trae_config: None,
            read_cache_mb: None,
            proxy_upstream: None,
            extra_args: Vec::new(),
        }
    }
}

pub struct Stack {
    pub root: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub agentd: Proc,
    pub envoy: Option<Proc>,
    /// http://127.0.0.1:port of agentd (gRPC and its own HTTP routes).
    pub grpc_url: String,
    /// http://127.0.0.1:port of Envoy's REST listener.
    pub rest_url: String,
    /// How long agentd took from spawn to SERVING.
    pub start_time: Duration,
}

impl Stack {
    pub async fn start(opts: StackOptions) -> Result<Self> {
        let root = tempfile::Builder::new().prefix("agentd-bench").tempdir()?;
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| root.path().join("data"));
        let grpc_port = free_port();
        let grpc_url = format!("http://127.0.0.1:{grpc_port}");
        let (agentd, start_time) = spawn_agentd(root.path(), &data_dir, grpc_port, &opts).await?;
        let mut stack = Stack {
            root,
            data_dir,
            agentd,
            envoy: None,
            grpc_url,
            rest_url: String::new(),
            start_time,
        };
        if opts.envoy {
            let (envoy, rest_url) =
                spawn_envoy(stack.root.path(), &[grpc_port], opts.proxy_upstream).await?;
            stack.envoy = Some(envoy);
            stack.rest_url = rest_url;
        }
        Ok(stack)
    }

    pub fn agentd_pid(&self) -> u32 {
        self.agentd.pid()
    }

    pub fn envoy_pid(&self) -> Option<u32> {
        self.envoy.as_ref().map(Proc::pid)
    }

    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.root.path().join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// What the reference routes answer: a small JSON object, as the API does.
pub const REFERENCE_BODY: &str =
    r#"{"status":"success","task_id":"0f3c2a6e-0000-4000-8000-000000000000"}"#;

/// An HTTP/2 (h2c) server that answers every request at once with
/// [`REFERENCE_BODY`]: the upstream of Envoy's `/bench/proxy` route.
pub async fn reference_upstream() -> Result<(u16, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            REFERENCE_BODY,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((port, task))
}

/// agentd with its working directory (and log, `agentd.log`) in `root`.
pub async fn spawn_agentd(
    root: &Path,
    data_dir: &Path,
    port: u16,
    opts: &StackOptions,
) -> Result<(Proc, Duration)> {
    let log = std::fs::File::create(root.join("agentd.log"))?;
    let mut cmd = Command::new(agentd_bin());
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--rate-limit")
        .arg("0")
        .arg("--max-running-tasks")
        .arg(opts.max_running_tasks.to_string())
        .args(
            opts.read_cache_mb
                .map(|mb| ["--read-cache-mb".to_string(), mb.to_string()])
                .into_iter()
                .flatten(),
        )
        .args(&opts.extra_args)
        .current_dir(root)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for (k, _) in std::env::vars() {
        if k.starts_with("AGENTD_") || k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") {
            cmd.env_remove(k);
        }
    }
    if let Some(yaml) = &opts.trae_config {
        let cfg = root.join("trae.yaml");
        std::fs::write(&cfg, yaml)?;
        cmd.arg("--trae-config").arg(cfg);
    }
    let started = Instant::now();
    let mut proc = Proc {
        child: cmd.spawn().context("starting agentd")?,
    };
    let url = format!("http://127.0.0.1:{port}");
    let deadline = started + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!(
                "agentd exited with {status}: {}",
                std::fs::read_to_string(root.join("agentd.log"))?
            );
        }
        if serving(&url).await {
            return Ok((proc, started.elapsed()));
        }
        if Instant::now() > deadline {
            proc.stop();
            bail!("agentd did not become SERVING within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn serving(url: &str) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("valid url")
        .connect()
        .await
    else {
        return false;
    };
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    matches!(reply, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32)
}

/// Envoy with the repository's config in front of the agentd nodes on
/// `grpc_ports`, plus one `direct_response` route in the same virtual host
/// (same filter chain): the ceiling for anything served behind Envoy.
pub async fn spawn_envoy(
    root: &Path,
    grpc_ports: &[u16],
    proxy_upstream: Option<u16>,
) -> Result<(Proc, String)> {
    let (rest, ap, admin) = (free_port(), free_port(), free_port());
    let dir = root.join("envoy");
    let mut config = Command::new(Path::new(REPO).join("scripts/envoy-config"));
    config
        .arg(&dir)
        .arg(agentd_bin())
        .env("TRAE_PORT", rest.to_string())
        .env("AP_PORT", ap.to_string())
        .env("ENVOY_ADMIN_PORT", admin.to_string())
        .env_remove("AGENTD_UPSTREAMS");
    match grpc_ports {
        [one] => config.env("AGENTD_LISTEN", format!("127.0.0.1:{one}")),
        many => config.env(
            "AGENTD_UPSTREAMS",
            many.iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    let out = config.output()?;
    if !out.status.success() {
        bail!(
            "scripts/envoy-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cfg = PathBuf::from(
        String::from_utf8(out.stdout)?
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    );
    let mut yaml = std::fs::read_to_string(&cfg)?;
    let mut routes = format!(
        "              - match: {{path: \"/bench/direct\"}}\n                direct_response: {{status: 200, body: {{inline_string: {body:?}}}}}\n                response_headers_to_add: [{{header: {{key: content-type, value: application/json}}}}]\n",
        body = REFERENCE_BODY
    );
    if let Some(port) = proxy_upstream {
        routes.push_str(
            "              - match: {path: \"/bench/proxy\"}\n                route: {cluster: bench_upstream}\n                typed_per_filter_config: *no_transcoder\n",
        );
        let clusters = "  clusters:\n";
        if !yaml.contains(clusters) {
            bail!("envoy config changed shape: no clusters list to add the reference upstream to");
        }
        let cluster = format!(
            "  - name: bench_upstream\n    type: STATIC\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{http2_protocol_options: {{}}}}\n    load_assignment:\n      cluster_name: bench_upstream\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]\n"
        );
        yaml = yaml.replacen(clusters, &format!("{clusters}{cluster}"), 1);
    }
    // Appended after the routes that define the `*no_transcoder` anchor.
    let anchor = "              # Everything the transcoder produced";
    if !yaml.contains(anchor) {
        bail!("envoy config changed shape: no catch-all route to put the reference routes before");
    }
    std::fs::write(&cfg, yaml.replacen(anchor, &format!("{routes}{anchor}"), 1))?;

    let envoy_bin =
        std::env::var("ENVOY_BIN").unwrap_or_else(|_| format!("{REPO}/.venv/bin/envoy"));
    let log = std::fs::File::create(root.join("envoy.log"))?;
    let proc = Proc {
        child: Command::new(envoy_bin)
            .arg("-c")
            .arg(&cfg)
            .arg("--log-level")
            .arg("error")
            .arg("--base-id")
            .arg(admin.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting envoy (set ENVOY_BIN or run scripts/setup)")?,
    };
    let url = format!("http://127.0.0.1:{rest}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{url}/api/health")).send().await
            && r.status().is_success()
        {
            return Ok((proc, url));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "envoy did not answer /api/health: {}",
        std::fs::read_to_string(root.join("envoy.log"))?
    )
}

/// Resident set size of a process, in bytes (VmRSS), and its peak (VmHWM).
pub fn rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the
    // name, in clock ticks (USER_HZ, 100 on Linux).
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Samples a process's RSS in the background; `max()` is the highest seen.
pub struct RssSampler {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut max = rss(pid).0;
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => max = max.max(rss(pid).0),
                }
            }
            max.max(rss(pid).0)
        });
        Self { stop, handle }
    }

    pub async fn max(self) -> u64 {
        let _ = self.stop.send(true);
        self.handle.await.unwrap_or(0)
    }
}
