//! `agentd logs`: a task's events, one line each, starting with its seq.
//! The history comes from TraeService.GetTaskStatus; with `--follow`, new
//! events from TraeService.StreamTask, resumed after the last seq shown
//! whenever the connection drops.

use agentd::{
    proto::{TaskEvent, trae::GetTaskStatusRequest},
    tasks::EventKind,
};
use anyhow::Context as _;
use clap::Args;

use super::{
    Connection,
    client::Client,
    exit,
    follow::{Follower, Item},
    print_line,
    render::{self, event_json, log_line},
};

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The task.
    pub task_id: String,
    /// Keep printing new events until the task ends (reconnecting, and
    /// resuming after the last seq, if the connection drops).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events after this seq (every line starts with its seq).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after_seq: u32,
    /// One JSON object per event (the shape of the SSE streams).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Connection,
}

fn print_event(ev: &TaskEvent, json: bool) -> anyhow::Result<()> {
    if json {
        print_line(&event_json(ev).to_string())
    } else {
        print_line(&log_line(ev))
    }
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let mut client = Client::new(&args.conn)?;
    let history = client
        .trae
        .get_task_status(GetTaskStatusRequest {
            task_id: args.task_id.clone(),
        })
        .await
        .with_context(|| format!("reading the events of task {}", args.task_id))?
        .into_inner();
    let mut last = args.after_seq;
    for ev in history.messages.iter().filter(|e| e.seq > args.after_seq) {
        print_event(ev, args.json)?;
        last = ev.seq;
    }
    let ended = history
        .messages
        .iter()
        .any(|e| render::kind(e) == Some(EventKind::End));
    if !args.follow || ended {
        return Ok(exit::OK);
    }

    let mut events = Follower::new(client, &args.task_id, last);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            item = events.next() => match item? {
                Some(Item::Event(ev)) => print_event(&ev, args.json)?,
                Some(Item::Heartbeat) => {}
                Some(Item::Lost { after_seq, why }) => {
                    eprintln!("connection lost after seq {after_seq} ({why}); reconnecting…");
                }
                Some(Item::Resumed { after_seq }) => {
                    eprintln!("reconnected; resuming after seq {after_seq}");
                }
                None => return Ok(exit::OK),
            },
            _ = &mut ctrl_c => {
                eprintln!(
                    "interrupted; resume with `agentd logs {} --follow --after-seq {}`",
                    args.task_id,
                    events.last_seq()
                );
                return Ok(exit::INTERRUPTED);
            }
        }
    }
}
