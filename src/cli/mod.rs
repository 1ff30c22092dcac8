//! The client subcommands of `agentd`, for people at a terminal: `run`,
//! `tasks`, `logs`, `stop` and `artifacts` talk gRPC (the generated tonic
//! clients) to a running agentd. They are clients of the API like any other
//! and never reach into the task manager or the store.

mod artifacts;
mod client;
mod follow;
mod logs;
mod progress;
mod render;
mod run;
mod tasks;

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Exit codes of the client subcommands (shown by `--help`).
pub mod exit {
    /// Success; for `run --follow`, the task completed.
    pub const OK: u8 = 0;
    /// The request failed: refused by agentd (unknown task, bad input, …),
    /// or a local error (a file that cannot be read or written).
    pub const ERROR: u8 = 1;
    // 2 is clap's: the command line itself is wrong.
    /// `run --follow`: the task failed (provider error, max_steps, timeout, …).
    pub const TASK_FAILED: u8 = 3;
    /// `run --follow`: the task was stopped.
    pub const TASK_STOPPED: u8 = 4;
    /// agentd could not be reached, or the connection was lost for good.
    pub const UNAVAILABLE: u8 = 5;
    /// Interrupted with Ctrl-C (the task keeps running).
    pub const INTERRUPTED: u8 = 130;
}

/// The exit codes, for `--help`.
pub const EXIT_CODES: &str = "\
Exit codes of the client commands (run, tasks, logs, stop, artifacts):
  0    success (run --follow: the task completed)
  1    the request failed (refused by agentd, or a local file error)
  2    invalid command line
  3    run --follow: the task failed
  4    run --follow: the task was stopped
  5    agentd could not be reached (or the connection was lost for good)
  130  interrupted (Ctrl-C); the task keeps running";

/// Where agentd is and how to authenticate; every client command takes these.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// agentd's gRPC address (http://host:port; the scheme may be left out).
    #[arg(
        long,
        env = "AGENTD_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// API key, when agentd requires one (sent as `Authorization: Bearer <key>`).
    #[arg(long, env = "AGENTD_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit a task (TraeService.Run) and print its id; with --follow, show
    /// its progress until it ends and exit with its outcome.
    #[command(after_help = EXIT_CODES)]
    Run(run::RunArgs),
    /// List tasks (AgentService.ListTasks), oldest first, a page at a time.
    #[command(after_help = EXIT_CODES)]
    Tasks(tasks::TasksArgs),
    /// Print a task's events, each with its seq; --after-seq N resumes after
    /// one; --follow keeps printing until the task ends.
    #[command(after_help = EXIT_CODES)]
    Logs(logs::LogsArgs),
    /// Stop a running task and every process it started.
    #[command(after_help = EXIT_CODES)]
    Stop(tasks::StopArgs),
    /// List a task's artifacts; `get` downloads one, `put` uploads a file.
    #[command(after_help = EXIT_CODES)]
    Artifacts(artifacts::ArtifactsArgs),
}

impl ClientCommand {
    fn connection(&self) -> &Connection {
        match self {
            ClientCommand::Run(a) => &a.conn,
            ClientCommand::Tasks(a) => &a.conn,
            ClientCommand::Logs(a) => &a.conn,
            ClientCommand::Stop(a) => &a.conn,
            ClientCommand::Artifacts(a) => &a.conn,
        }
    }
}

/// Runs one client command; errors are printed here, once.
pub async fn dispatch(command: ClientCommand) -> ExitCode {
    let server = command.connection().server.clone();
    let result = match command {
        ClientCommand::Run(a) => run::run(a).await,
        ClientCommand::Tasks(a) => tasks::list(a).await,
        ClientCommand::Logs(a) => logs::logs(a).await,
        ClientCommand::Stop(a) => tasks::stop(a).await,
        ClientCommand::Artifacts(a) => artifacts::artifacts(a).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // `agentd logs ID | head`: the reader left; nothing went wrong here.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("agentd: {}", client::explain(&e, &server));
            ExitCode::from(client::exit_code(&e))
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes one line to standard output; a closed pipe is an error the caller
/// passes up (and `dispatch` treats as the reader having left).
fn print_line(line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches as _, Parser};

    use super::*;

    #[derive(Parser, Debug)]
    struct Top {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        let m = Top::command()
            .try_get_matches_from(std::iter::once("agentd").chain(args.iter().copied()))?;
        Top::from_arg_matches(&m).map(|t| t.command)
    }

    #[test]
    fn command_lines_parse() {
        Top::command().debug_assert();
        let ClientCommand::Artifacts(a) =
            parse(&["artifacts", "t1", "get", "a1", "-o", "x", "--server", "h:1"]).unwrap()
        else {
            panic!("not artifacts")
        };
        assert_eq!(a.task_id, "t1");
        assert_eq!(a.conn.server, "h:1", "--server after the nested subcommand");
        let ClientCommand::Artifacts(a) = parse(&["artifacts", "t1"]).unwrap() else {
            panic!("not artifacts")
        };
        assert!(a.action.is_none());
        assert!(parse(&["tasks", "--status", "bogus"]).is_err());
        assert!(parse(&["tasks", "--page-size", "101"]).is_err());
        assert!(parse(&["run", "x", "--max-steps", "0"]).is_err());
        let ClientCommand::Logs(l) = parse(&["logs", "t", "--after-seq", "7", "-f"]).unwrap()
        else {
            panic!("not logs")
        };
        assert!(l.follow && l.after_seq == 7);
    }
}
