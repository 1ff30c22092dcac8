//! `agentd run`: submit a task (TraeService.Run); with `--follow`, show its
//! progress from the event log and exit with its outcome.

use std::path::PathBuf;

use agentd::proto::trae::RunRequest;
use anyhow::Context as _;
use clap::Args;

use super::{
    Connection, client::Client, exit, follow::Follower, print_line, progress::RunView,
    render::Outcome,
};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The problem statement for the agent.
    pub task: String,
    /// Directory the agent works in (default: the current directory). A
    /// relative path is taken from the current directory.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub working_dir: Option<PathBuf>,
    /// LLM provider (openai, anthropic, google, azure, openrouter, doubao,
    /// ollama); default: the server's configuration.
    #[arg(long)]
    pub provider: Option<String>,
    /// Model name; default: the configuration's.
    #[arg(long)]
    pub model: Option<String>,
    /// Steps (LLM turns) before the task fails; default: the configuration's.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub max_steps: Option<i32>,
    /// Budget: fail the task before a model call that would pass this many
    /// tokens (input plus output, all calls).
    #[arg(long, value_name = "N")]
    pub max_tokens_total: Option<u64>,
    /// Budget: the same for the estimated cost, in US dollars.
    #[arg(long, value_name = "USD")]
    pub max_cost_usd: Option<f64>,
    /// Budget: the same for the run's wall time, in seconds.
    #[arg(long, value_name = "SECS")]
    pub max_wall_secs: Option<f64>,
    /// The task's memory limit (e.g. 512M), at most the server's.
    #[arg(long, value_name = "SIZE")]
    pub task_memory_max: Option<String>,
    /// The task's process limit, at most the server's.
    #[arg(long, value_name = "N")]
    pub task_pids_max: Option<u64>,
    /// The task's CPU limit in CPUs (e.g. 0.5), at most the server's.
    #[arg(long, value_name = "CPUS")]
    pub task_cpu_max: Option<f64>,
    /// Finish only once the git diff of the working directory is non-empty.
    #[arg(long)]
    pub must_patch: bool,
    /// Agent type (only trae_agent exists).
    #[arg(long, value_name = "TYPE")]
    pub agent_type: Option<String>,
    /// Trae config file (YAML or legacy JSON) on the server's machine. A
    /// relative path is taken from the current directory.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Where to write the trajectory JSON (relative: inside the working directory).
    #[arg(long, value_name = "FILE")]
    pub trajectory_file: Option<String>,
    /// Where to write the git diff (relative: inside the working directory).
    #[arg(long, value_name = "FILE")]
    pub patch_path: Option<String>,
    /// Show live progress until the task ends; the exit code tells its outcome.
    #[arg(long, short = 'f')]
    pub follow: bool,
    #[command(flatten)]
    pub conn: Connection,
}

fn absolute(path: PathBuf) -> anyhow::Result<String> {
    let abs = std::path::absolute(&path)
        .with_context(|| format!("resolving the path {}", path.display()))?;
    abs.into_os_string()
        .into_string()
        .map_err(|p| anyhow::anyhow!("{} is not valid UTF-8", PathBuf::from(p).display()))
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let mut client = Client::new(&args.conn)?;
    let working_dir = match args.working_dir {
        Some(dir) => absolute(dir)?,
        None => absolute(std::env::current_dir().context("the current directory")?)?,
    };
    let request = RunRequest {
        task: args.task,
        working_dir,
        provider: args.provider.unwrap_or_default(),
        model: args.model.unwrap_or_default(),
        max_steps: args.max_steps,
        must_patch: args.must_patch,
        agent_type: args.agent_type.unwrap_or_default(),
        config_file: args
            .config_file
            .map(absolute)
            .transpose()?
            .unwrap_or_default(),
        trajectory_file: args.trajectory_file.unwrap_or_default(),
        patch_path: args.patch_path.unwrap_or_default(),
        max_tokens_total: args.max_tokens_total,
        max_cost_usd: args.max_cost_usd,
        max_wall_secs: args.max_wall_secs,
        task_memory_max: args.task_memory_max,
        task_pids_max: args.task_pids_max,
        task_cpu_max: args.task_cpu_max,
        on_interrupt: String::new(),
    };
    let task_id = client
        .trae
        .run(request)
        .await
        .context("submitting the task")?
        .into_inner()
        .task_id;
    if !args.follow {
        print_line(&task_id)?;
        return Ok(exit::OK);
    }

    let mut view = RunView::new(&task_id);
    let mut events = Follower::new(client, &task_id, 0);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            item = events.next() => match item {
                Ok(Some(item)) => view.show(&item)?,
                Ok(None) => break,
                Err(e) => {
                    view.finish();
                    return Err(e);
                }
            },
            _ = &mut ctrl_c => {
                let seq = events.last_seq();
                view.finish();
                eprintln!(
                    "interrupted; task {task_id} keeps running. Follow it with \
                     `agentd logs {task_id} --follow --after-seq {seq}`, stop it with `agentd stop {task_id}`"
                );
                return Ok(exit::INTERRUPTED);
            }
        }
    }
    let outcome = view.finish().or(events.outcome);
    Ok(match outcome {
        Some(Outcome::Completed) => exit::OK,
        Some(Outcome::Failed) => exit::TASK_FAILED,
        Some(Outcome::Stopped) => exit::TASK_STOPPED,
        None => {
            eprintln!("agentd: task {task_id} ended without telling its outcome");
            exit::ERROR
        }
    })
}
