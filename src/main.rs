//! The `agentd` command: `serve` and `descriptor-set` here, the client
//! commands (`run`, `tasks`, `logs`, `stop`, `artifacts`) in `cli`.

mod cli;
mod telemetry;

use std::{io::Write as _, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas eagerly by default, which keeps ~20 MB more
/// resident in an idle agentd. It reads its options from the environment when
/// it starts (before `main`), so agentd re-executes itself once with this set.
const MIMALLOC_LAZY_COMMIT: (&str, &str) = ("MIMALLOC_ARENA_EAGER_COMMIT", "0");

#[derive(Parser)]
#[command(
    name = "agentd",
    version,
    about = "Runs AI coding-agent tasks as a service (gRPC, gRPC-Web, REST via Envoy)",
    after_help = cli::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC, gRPC-Web and HTTP on one port (put Envoy in front for REST).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "AGENTD_LISTEN", default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Where the database and task workspaces live.
        #[arg(long, env = "AGENTD_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// Default Trae Agent configuration file (YAML, or legacy JSON).
        #[arg(long, env = "TRAE_CONFIG_FILE")]
        trae_config: Option<PathBuf>,
        /// Tasks that may run at once; further runs get 429 INSUFFICIENT_RESOURCES.
        #[arg(long, env = "AGENTD_MAX_RUNNING_TASKS", default_value_t = 5)]
        max_running_tasks: usize,
        /// Wall-clock limit of one task's run, in seconds.
        #[arg(long, env = "AGENTD_TASK_TIMEOUT_SECS", default_value_t = 3600)]
        task_timeout_secs: u64,
        /// What becomes of a run agentd was running when it stopped (a crash,
        /// SIGKILL, a shutdown) or whose node was lost: `resume` continues it
        /// from its last completed step, `fail` fails it. A request may choose
        /// for itself.
        #[arg(long, env = "AGENTD_ON_INTERRUPT", default_value = "resume", value_parser = agentd::tasks::OnInterrupt::parse)]
        on_interrupt: agentd::tasks::OnInterrupt,
        /// How many times one run is resumed at most; interrupted once more,
        /// it fails.
        #[arg(long, env = "AGENTD_MAX_RESUMES", default_value_t = 3)]
        max_resumes: u32,
        /// Wall-clock limit of one synchronous Agent Protocol step, in seconds:
        /// agentd answers the step itself before Envoy's 900 s idle timeout.
        #[arg(long, env = "AGENTD_STEP_TIMEOUT_SECS", default_value_t = 840)]
        step_timeout_secs: u64,
        /// Default limit of one model request, in seconds (a model's `timeout`
        /// in the Trae config wins). Retries never outlive the step or task.
        #[arg(long, env = "AGENTD_LLM_TIMEOUT_SECS", default_value_t = 600)]
        llm_timeout_secs: u64,
        /// Default budget of every task, unless its request or Trae config
        /// sets one: input plus output tokens over all its model calls. A
        /// run stops before a model call that would pass it.
        #[arg(long, env = "AGENTD_MAX_TOKENS_TOTAL")]
        max_tokens_total: Option<u64>,
        /// Default budget: estimated cost of a task's model calls, in US dollars.
        #[arg(long, env = "AGENTD_MAX_COST_USD")]
        max_cost_usd: Option<f64>,
        /// Default budget: a task's wall time, in seconds, checked before
        /// each model call (--task-timeout-secs still ends it at any point).
        #[arg(long, env = "AGENTD_MAX_WALL_SECS")]
        max_wall_secs: Option<f64>,
        /// A directory the working_dir of `POST /api/run` must lie inside
        /// (repeatable; the environment variable is colon-separated). None:
        /// any absolute path. Agent Protocol workspaces are always allowed.
        #[arg(
            long = "allowed-root",
            env = "AGENTD_ALLOWED_ROOTS",
            value_delimiter = ':'
        )]
        allowed_roots: Vec<PathBuf>,
        /// Run the bash tool under bubblewrap (bwrap) when it works here:
        /// working_dir writable, the rest read-only, no network.
        #[arg(long, env = "AGENTD_SANDBOX", value_parser = clap::builder::FalseyValueParser::new())]
        sandbox: bool,
        /// With --sandbox: let sandboxed commands use the network.
        #[arg(long, env = "AGENTD_SANDBOX_NETWORK", value_parser = clap::builder::FalseyValueParser::new())]
        sandbox_network: bool,
        /// Run each task's processes in a control group of its own when this
        /// machine allows it (root or a delegated cgroup): a stop then ends
        /// what left the process group too, and the limits below apply.
        /// auto (v2 where mounted, v1 for the controllers v2 lacks), v2, v1 or off.
        #[arg(long, env = "AGENTD_TASK_CGROUPS", default_value = "auto", value_parser = agentd::tasks::CgroupMode::parse)]
        task_cgroups: agentd::tasks::CgroupMode,
        /// Memory one task's processes may use together (512M, 2G; "max":
        /// none). Default: half of this machine's memory.
        #[arg(long, env = "AGENTD_TASK_MEMORY_MAX")]
        task_memory_max: Option<String>,
        /// Processes and threads one task may run at once (0: no limit).
        #[arg(long, env = "AGENTD_TASK_PIDS_MAX", default_value_t = 4096)]
        task_pids_max: u64,
        /// CPUs' worth of time one task may use (1.5 = one and a half cores;
        /// 0: no limit, the scheduler shares the CPUs fairly).
        #[arg(long, env = "AGENTD_TASK_CPU_MAX", default_value_t = 0.0)]
        task_cpu_max: f64,
        /// API keys callers must present (comma-separated); none: no authentication.
        #[arg(
            long = "api-key",
            env = "AGENTD_API_KEYS",
            value_delimiter = ',',
            hide_env_values = true
        )]
        api_keys: Vec<String>,
        /// A file of API keys (added to --api-key): one per line, or YAML
        /// entries with `name`, `key` (or `key_sha256`) and `role: admin|user`.
        /// Read again on SIGHUP.
        #[arg(long, env = "AGENTD_API_KEYS_FILE")]
        api_keys_file: Option<PathBuf>,
        /// Requests per client (IP address) per minute; 0 turns the limit off.
        #[arg(long, env = "AGENTD_RATE_LIMIT", default_value_t = 100)]
        rate_limit: u32,
        /// Memory for the read cache of recently read tasks (rows, artifact
        /// lists, event logs), in MiB; 0 turns it off.
        #[arg(long, env = "AGENTD_READ_CACHE_MB", default_value_t = 32)]
        read_cache_mb: u64,
        /// Keep tasks, steps, artifact records and event logs in PostgreSQL
        /// (postgres://user:password@host:port/database) instead of SQLite in
        /// the data directory. Task workspaces stay in the data directory.
        #[arg(long, env = "AGENTD_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// With --database-url: this node's name among the nodes sharing the
        /// database (default: host name and port). Its own parts of a shared
        /// data directory are kept under run/<node id>/ and tmp/<node id>/.
        #[arg(long, env = "AGENTD_NODE_ID")]
        node_id: Option<String>,
        /// With --database-url: seconds a run stays this node's without a
        /// heartbeat (three beats per lease); after that another node ends
        /// it as failed (interrupted).
        #[arg(long, env = "AGENTD_LEASE_SECS", default_value_t = 10)]
        lease_secs: u64,
        /// The built web console (scripts/setup builds web/console into
        /// web/console/dist), served at /console/.
        #[arg(long, env = "AGENTD_CONSOLE_DIR", default_value = "web/console/dist")]
        console_dir: PathBuf,
    },
    /// Write the protobuf descriptor set (with HTTP annotations) that Envoy's
    /// transcoder loads, to a file or standard output.
    DescriptorSet {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> anyhow::Result<ExitCode> {
    let (name, value) = MIMALLOC_LAZY_COMMIT;
    if std::env::var_os(name).is_none()
        && let Ok(exe) = std::env::current_exe()
    {
        use std::os::unix::process::CommandExt as _;
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        // Same PID, same arguments; exec returns only if it failed, and then
        // agentd simply runs with mimalloc's defaults.
        let _ = std::process::Command::new(&exe)
            .arg0(arg0)
            .args(args)
            .env(name, value)
            .exec();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Client(command) => Ok(cli::dispatch(command).await),
        Command::Serve {
            listen,
            data_dir,
            trae_config,
            max_running_tasks,
            task_timeout_secs,
            on_interrupt,
            max_resumes,
            step_timeout_secs,
            llm_timeout_secs,
            max_tokens_total,
            max_cost_usd,
            max_wall_secs,
            allowed_roots,
            sandbox,
            sandbox_network,
            task_cgroups,
            task_memory_max,
            task_pids_max,
            task_cpu_max,
            api_keys,
            api_keys_file,
            rate_limit,
            read_cache_mb,
            database_url,
            node_id,
            lease_secs,
            console_dir,
        } => {
            // Logs; spans to OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
            let telemetry = telemetry::init()?;
            let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
            let runner = agentd::tasks::RunnerSettings {
                max_running: max_running_tasks.max(1),
                task_timeout: secs(task_timeout_secs),
                step_timeout: secs(step_timeout_secs),
                llm_request_timeout: secs(llm_timeout_secs),
                default_budget: agentd_engine::agent::Budget {
                    max_tokens_total,
                    max_cost_usd,
                    max_wall_secs,
                },
                on_interrupt,
                max_resumes,
            };
            runner
                .default_budget
                .validate()
                .map_err(|e| anyhow::anyhow!("budget flags: {e}"))?;
            // Every configured path, absolute from here on (see `paths`).
            let paths = agentd::paths::PathResolver::from_process()?;
            let data_dir = paths.absolute("--data-dir", &data_dir)?;
            let console_dir = paths.absolute("--console-dir", &console_dir)?;
            let default_config = PathBuf::from(agentd_engine::config::DEFAULT_CONFIG_FILE);
            let trae_config = trae_config.filter(|p| !p.as_os_str().is_empty());
            let trae_config = paths.absolute(
                "--trae-config",
                trae_config.as_ref().unwrap_or(&default_config),
            )?;
            let allowed_roots = allowed_roots
                .iter()
                .filter(|r| !r.as_os_str().is_empty())
                .map(|r| paths.absolute("--allowed-root", r))
                .collect::<Result<Vec<_>, _>>()?;
            let api_keys_file = api_keys_file
                .map(|p| paths.absolute("--api-keys-file", &p))
                .transpose()?;
            let api_keys = agentd::api::auth::ApiKeys::load(api_keys, api_keys_file)?;
            let task_limits = agentd::tasks::CgroupLimits {
                memory_max: match task_memory_max.as_deref() {
                    Some(text) => agentd::tasks::parse_bytes(text)
                        .map_err(|e| anyhow::anyhow!("--task-memory-max {e}"))?,
                    None => Some(agentd::host::machine_memory_bytes().0 / 2).filter(|b| *b > 0),
                },
                pids_max: Some(task_pids_max).filter(|n| *n > 0),
                cpu_max: Some(task_cpu_max).filter(|c| *c > 0.0),
            };
            // Parsed here, not by clap: clap's error would print the URL,
            // password and all.
            let database_url = database_url
                .filter(|u| !u.is_empty())
                .map(|u| agentd::store::DatabaseUrl::parse(&u))
                .transpose()?;
            let served = agentd::server::serve(agentd::server::ServeOptions {
                listen,
                data_dir,
                trae_config,
                config_dir: paths.base().to_path_buf(),
                runner,
                containment: agentd::tasks::Containment {
                    allowed_roots,
                    sandbox,
                    sandbox_network,
                    cgroups: task_cgroups,
                    task_limits,
                },
                api_keys,
                rate_limit_per_minute: rate_limit,
                read_cache_bytes: read_cache_mb.saturating_mul(1 << 20),
                database_url,
                node_id: node_id.filter(|n| !n.is_empty()),
                lease: secs(lease_secs),
                console_dir,
            })
            .await;
            telemetry.shutdown().await;
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DescriptorSet { out } => {
            match out {
                Some(path) => std::fs::write(path, agentd::proto::DESCRIPTOR_SET)?,
                None => std::io::stdout().write_all(agentd::proto::DESCRIPTOR_SET)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
