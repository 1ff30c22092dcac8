//! Wiring: one port serves gRPC (HTTP/2), gRPC-Web (HTTP/1.1 or 2) and plain
//! HTTP, with reflection and the standard health service. Envoy sits in front
//! for REST; see `envoy/`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    http::header,
    response::Response,
    serve::{Listener as _, ListenerExt as _},
};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_web::GrpcWebLayer;
use tower::Layer as _;

use crate::{
    api::{
        AgentApi, ConsoleApi, TraeApi,
        auth::{self, ApiKeys},
        observe::ObserveLayer,
        rate_limit::{self, RateLimit},
        reject, sse, trae_status, websocket,
    },
    console,
    error::{Error, Resource},
    metrics::Metrics,
    proto::{
        self, ap::agent_service_server::AgentServiceServer,
        console::console_service_server::ConsoleServiceServer,
        trae::trae_service_server::TraeServiceServer,
    },
    store::{self, DatabaseUrl, TaskStatus},
    tasks::{
        ClusterSettings, Containment, RunnerSettings, TaskManager, TaskSettings, Workspaces,
        node_id,
    },
};

/// How long open streams may take to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Absolute, like every path here (`paths::PathResolver`); created when missing.
    pub data_dir: PathBuf,
    /// The default Trae config file (it need not exist).
    pub trae_config: PathBuf,
    /// What a request's relative `config_file` is resolved against: the
    /// directory agentd was started in.
    pub config_dir: PathBuf,
    pub runner: RunnerSettings,
    /// Allowed roots of working_dir, bash sandbox.
    pub containment: Containment,
    /// Empty: no authentication.
    pub api_keys: ApiKeys,
    /// Requests per client per minute; 0 turns the limit off.
    pub rate_limit_per_minute: u32,
    /// Size of the store's read cache of hot tasks, in bytes; 0 turns it off.
    pub read_cache_bytes: u64,
    /// PostgreSQL holds the store; None: SQLite in the data directory.
    pub database_url: Option<DatabaseUrl>,
    /// With a database URL: this node's name among the nodes sharing it
    /// (None: host name + port).
    pub node_id: Option<String>,
    /// With a database URL: how long a run stays a node's without its heartbeat.
    pub lease: Duration,
    /// The built web console, served at /console/ (it need not exist).
    pub console_dir: PathBuf,
}

pub async fn serve(mut opts: ServeOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.data_dir.is_absolute() && opts.config_dir.is_absolute(),
        "the data and config directories must be absolute paths"
    );
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data directory {}", opts.data_dir.display()))?;
    // Its real path: a symlinked data directory must compare equal to the
    // canonical paths of workspaces, uploads and the sandbox's hidden list.
    opts.data_dir = std::fs::canonicalize(&opts.data_dir)
        .with_context(|| format!("resolving data directory {}", opts.data_dir.display()))?;
    let (store, database) = store::open(
        opts.database_url.as_ref(),
        &opts.data_dir,
        opts.read_cache_bytes,
    )
    .await?;
    let cluster = cluster_settings(&opts)?;
    let workspaces =
        Workspaces::open_for_node(&opts.data_dir, cluster.as_ref().map(|c| c.node_id.as_str()))?;
    if let Some(c) = &cluster {
        tracing::info!(node_id = %c.node_id, address = %c.address, lease = ?c.lease, "one node of a cluster");
    }
    let metrics = Metrics::new();
    let tasks = Arc::new(
        TaskManager::start(
            store,
            workspaces,
            TaskSettings {
                trae_config_file: opts.trae_config.clone(),
                config_dir: opts.config_dir.clone(),
                runner: opts.runner.clone(),
                containment: opts.containment.clone(),
                cluster,
            },
            metrics.clone(),
        )
        .await?,
    );
    tasks.start_cluster_work().await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TraeServiceServer<TraeApi>>().await;
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // gRPC-Web is layered per service: on the whole router it would answer
    // 400 to plain HTTP/1.1 requests (WebSockets, /healthz).
    let web = GrpcWebLayer::new();
    let grpc = Routes::new(web.layer(TraeServiceServer::new(TraeApi::new(tasks.clone()))))
        .add_service(web.layer(AgentServiceServer::new(AgentApi::new(tasks.clone()))))
        .add_service(
            web.layer(
                ConsoleServiceServer::new(ConsoleApi::new(tasks.clone()))
                    .max_decoding_message_size(console::MAX_CHUNK_MESSAGE_BYTES),
            ),
        )
        .add_service(web.layer(health_service))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router();
    if opts.api_keys.is_enabled() {
        tracing::info!("API keys required on every call except health checks");
    }
    reload_keys_on_sighup(opts.api_keys.clone());
    // Outermost first: rate limit (also for unauthenticated floods), then auth.
    let app: Router = grpc
        .merge(websocket::routes(tasks.clone()))
        .merge(sse::routes(tasks.clone()))
        .merge(trae_status::routes(tasks.clone()))
        .route("/metrics", {
            let (metrics, tasks) = (metrics.clone(), tasks.clone());
            axum::routing::get(move || async move { metrics_text(&metrics, &tasks).await })
        })
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            opts.api_keys.clone(),
            auth::require_api_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            RateLimit::per_minute(opts.rate_limit_per_minute),
            rate_limit::limit_rate,
        ))
        // Outermost: spans and request metrics see refusals too.
        .layer(ObserveLayer::new(metrics, grpc_methods()));
    // The console's static files: no key (the page asks for one) and no rate
    // limit (a page load is a dozen files); its API calls go through the above.
    if !console::is_built(&opts.console_dir) {
        tracing::info!(console_dir = %opts.console_dir.display(), "web console not built (scripts/setup builds it); /console/ says how");
    }
    let app = console::routes(opts.console_dir.clone()).merge(app);

    // TCP_NODELAY: a gRPC response is several small writes (headers, data,
    // trailers); with Nagle, the last waits for the peer's delayed ACK (40 ms).
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
    tracing::info!(listen = %listener.local_addr()?, data_dir = %opts.data_dir.display(), %database, "agentd serving");

    let stop = CancellationToken::new();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    tokio::select! {
        served = server => served.context("serving")?,
        () = async {
            shutdown_signal().await;
            tracing::info!("shutting down: no new connections, open streams get {SHUTDOWN_GRACE:?}");
            health.set_not_serving::<TraeServiceServer<TraeApi>>().await;
            health.set_not_serving::<AgentServiceServer<AgentApi>>().await;
            // Runs end or are left to resume, their processes ended either way.
            let ended = tasks.shutdown().await;
            if ended != Default::default() {
                tracing::info!(failed = ended.failed, suspended = ended.suspended, "ended running tasks; the suspended ones resume at the next start");
            }
            stop.cancel();
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("streams still open after the grace period; exiting"),
    }
    Ok(())
}

/// A node sharing PostgreSQL is one of a cluster; SQLite serves one node.
fn cluster_settings(opts: &ServeOptions) -> anyhow::Result<Option<ClusterSettings>> {
    if opts.database_url.is_none() {
        if opts.node_id.is_some() {
            tracing::warn!("--node-id is only used with --database-url (SQLite serves one node)");
        }
        return Ok(None);
    }
    let node_id = match &opts.node_id {
        Some(id) => id.clone(),
        None => node_id::default_node_id(opts.listen),
    };
    node_id::validate(&node_id).map_err(anyhow::Error::msg)?;
    // Other nodes dial this address: a wildcard listen address is not one.
    let address = if opts.listen.ip().is_unspecified() {
        node_id::default_node_id(opts.listen)
    } else {
        opts.listen.to_string()
    };
    Ok(Some(ClusterSettings {
        node_id,
        address,
        lease: opts.lease,
    }))
}

/// Unknown paths: gRPC callers get UNIMPLEMENTED, as gRPC expects; anything
/// else a 404 envelope (tonic's default would answer 200 with a gRPC status).
async fn unknown_route(req: axum::extract::Request) -> Response {
    let path = req.uri().path().to_string();
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    let e = if is_grpc {
        Error::Unimplemented(format!("unknown method {path}"))
    } else {
        Error::not_found(Resource::Route, format!("{} {path}", req.method()))
    };
    reject(&req, e)
}

/// SIGHUP reads the API keys file again; a file that no longer parses
/// leaves the keys in force.
fn reload_keys_on_sighup(keys: ApiKeys) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match keys.reload() {
                Ok(n) => tracing::info!(keys = n, "API keys reloaded"),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "API keys not reloaded; the previous keys stay in force")
                }
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

/// `GET /metrics`: Prometheus text exposition. Tasks by status and the
/// runner's load are read now; everything else is counted as it happens.
async fn metrics_text(metrics: &Metrics, tasks: &TaskManager) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tasks.task_counts().await {
        Ok(counts) => {
            // Every status, so one without tasks is a 0 series rather than none.
            let by_status = TaskStatus::ALL.map(|status| {
                let n = counts.iter().filter(|(s, _)| *s == status).map(|(_, n)| n);
                (status.as_str(), n.sum())
            });
            metrics.set_task_state(by_status, tasks.run_load());
        }
        Err(e) => tracing::warn!(error = %e, "/metrics: cannot read task counts"),
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// Every gRPC method served, as `/package.Service/Method`: the request
/// metrics' `method` label values.
fn grpc_methods() -> Vec<String> {
    use prost::Message as _;
    let mut methods: Vec<String> = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]
    .map(String::from)
    .into();
    let Ok(set) = prost_types::FileDescriptorSet::decode(proto::DESCRIPTOR_SET) else {
        return methods;
    };
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    methods
}
