//! `agentd tasks` (AgentService.ListTasks: status filter and pages) and
//! `agentd stop` (TraeService.StopTask).

use agentd::proto::{
    ap::{ListTasksRequest, Task},
    trae::StopTaskRequest,
};
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::{Connection, client::Client, exit, print_line, render::one_line};

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Status {
    Created,
    Running,
    Completed,
    Failed,
    Stopped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Stopped => "stopped",
        }
    }
}

#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Only tasks with this status.
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Page to show, from 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub page: i32,
    /// Tasks per page (at most 100).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub page_size: i32,
    /// Print JSON: {"tasks": [...], "pagination": {...}}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// The task to stop.
    pub task_id: String,
    #[command(flatten)]
    pub conn: Connection,
}

fn task_json(t: &Task) -> serde_json::Value {
    json!({
        "task_id": t.task_id, "status": t.status, "input": t.input,
        "created_at": t.created_at, "modified_at": t.modified_at, "artifacts": t.artifacts.len(),
    })
}

pub async fn list(args: TasksArgs) -> anyhow::Result<u8> {
    let mut client = Client::new(&args.conn)?;
    let resp = client
        .agent
        .list_tasks(ListTasksRequest {
            page: Some(args.page),
            size: Some(args.page_size),
            status: args.status.map(Status::as_str).unwrap_or_default().into(),
            ..Default::default()
        })
        .await
        .context("listing tasks")?
        .into_inner();
    let p = resp.pagination.unwrap_or_default();
    if args.json {
        let out = json!({
            "tasks": resp.tasks.iter().map(task_json).collect::<Vec<_>>(),
            "pagination": {"page": p.page, "size": p.size, "total": p.total, "pages": p.pages},
        });
        print_line(&out.to_string())?;
        return Ok(exit::OK);
    }
    if !resp.tasks.is_empty() {
        print_line(&format!(
            "{:<36}  {:<9}  {:<20}  INPUT",
            "TASK ID", "STATUS", "CREATED"
        ))?;
    }
    for t in &resp.tasks {
        print_line(&format!(
            "{:<36}  {:<9}  {:<20}  {}",
            t.task_id,
            t.status,
            t.created_at,
            one_line(&t.input, 60)
        ))?;
    }
    let filter = args
        .status
        .map(|s| format!(" with status {}", s.as_str()))
        .unwrap_or_default();
    eprintln!(
        "page {} of {}: {} of {} task(s){filter}",
        p.page,
        p.pages.max(1),
        resp.tasks.len(),
        p.total
    );
    Ok(exit::OK)
}

pub async fn stop(args: StopArgs) -> anyhow::Result<u8> {
    let mut client = Client::new(&args.conn)?;
    let resp = client
        .trae
        .stop_task(StopTaskRequest {
            task_id: args.task_id.clone(),
        })
        .await
        .with_context(|| format!("stopping task {}", args.task_id))?
        .into_inner();
    print_line(&resp.message)?;
    Ok(exit::OK)
}
