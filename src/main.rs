//! The `agentd` command.

use std::{io::Write as _, net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agentd",
    version,
    about = "Runs AI coding-agent tasks as a service (gRPC, gRPC-Web, REST via Envoy)"
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
    },
    /// Write the protobuf descriptor set (with HTTP annotations) that Envoy's
    /// transcoder loads, to a file or standard output.
    DescriptorSet {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            listen,
            data_dir,
            trae_config,
            max_running_tasks,
            task_timeout_secs,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,sqlx=warn".into()),
                )
                .init();
            let runner = agentd::tasks::RunnerSettings {
                max_running: max_running_tasks.max(1),
                task_timeout: std::time::Duration::from_secs(task_timeout_secs.max(1)),
            };
            agentd::server::serve(agentd::server::ServeOptions {
                listen,
                data_dir,
                trae_config,
                runner,
            })
            .await
        }
        Command::DescriptorSet { out } => {
            match out {
                Some(path) => std::fs::write(path, agentd::proto::DESCRIPTOR_SET)?,
                None => std::io::stdout().write_all(agentd::proto::DESCRIPTOR_SET)?,
            }
            Ok(())
        }
    }
}
