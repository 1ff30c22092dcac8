//! The web console's own service (`agentd.console.v1.ConsoleService`,
//! gRPC and gRPC-Web only): the views the two dialects do not offer, read
//! from the same task layer. The console calls the dialects' services for
//! everything else (runs, steps, streams, stop, downloads).

use std::{path::PathBuf, sync::Arc, time::Duration};

use futures_util::future::join_all;
use tokio::{io::AsyncReadExt as _, sync::broadcast::error::RecvError};
use tonic::{Request, Response, Status};

use super::{
    agent::artifact, auth::caller, console_upload::ChunkedUploads, convert::ApiStream,
    trae::summary,
};
use crate::{
    clock,
    error::{Error, Resource, Result},
    proto::console::{self, console_service_server::ConsoleService},
    tasks::TaskManager,
    tasks::{Caller, EventKind, Origin, Task, TaskStatus},
};

const DEFAULT_PAGE_SIZE: i32 = 25;
const MAX_PAGE_SIZE: i32 = 200;
/// A row's `input`, in characters: the list is for finding, not reading.
const INPUT_PREVIEW_CHARS: usize = 200;
/// How many recent tasks the overview's usage chart covers, in how many buckets.
const USAGE_TASKS: i64 = 1000;
const USAGE_BUCKETS: i64 = 24;
/// A patch is shown, not archived: its first 2 MiB.
const MAX_PATCH_BYTES: usize = 2 << 20;
/// WatchTasks: a burst of events becomes one update; an unchanged page is
/// still sent now and then, so the stream never looks idle to Envoy.
const WATCH_COALESCE: Duration = Duration::from_millis(250);
const WATCH_POLL: Duration = Duration::from_secs(1);
const WATCH_KEEPALIVE: Duration = Duration::from_secs(30);

pub struct ConsoleApi {
    tasks: Arc<TaskManager>,
    uploads: ChunkedUploads,
}

impl ConsoleApi {
    pub fn new(tasks: Arc<TaskManager>) -> Self {
        Self {
            tasks,
            uploads: ChunkedUploads::default(),
        }
    }
}

#[tonic::async_trait]
impl ConsoleService for ConsoleApi {
    async fn list_tasks(
        &self,
        req: Request<console::ListTasksRequest>,
    ) -> Result<Response<console::ListTasksResponse>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            list_page(&self.tasks, &caller, &req.into_inner()).await?,
        ))
    }

    type WatchTasksStream = ApiStream<console::WatchTasksResponse>;

    async fn watch_tasks(
        &self,
        req: Request<console::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let caller = caller(&req)?;
        let query = req.into_inner().query.unwrap_or_default();
        let tasks = self.tasks.clone();
        // The first page is checked before the stream starts: a bad filter is
        // the call's error, not a message.
        let first = list_page(&tasks, &caller, &query).await?;
        let stream = async_stream::try_stream! {
            let mut events = tasks.subscribe_all_events();
            let closing = tasks.streams_closing();
            let mut page = first;
            let mut sent_at = tokio::time::Instant::now();
            yield console::WatchTasksResponse { page: Some(page.clone()) };
            loop {
                // Not every change is an event (a new Agent Protocol task is
                // not), so the page is also read again every second.
                tokio::select! {
                    got = events.recv() => {
                        if matches!(got, Err(RecvError::Closed)) {
                            break;
                        }
                        tokio::time::sleep(WATCH_COALESCE).await;
                        while events.try_recv().is_ok() {}
                    }
                    () = tokio::time::sleep(WATCH_POLL) => {}
                    () = closing.cancelled() => break, // shutdown: the page reconnects
                }
                let next = list_page(&tasks, &caller, &query).await?;
                if next != page || sent_at.elapsed() >= WATCH_KEEPALIVE {
                    page = next;
                    sent_at = tokio::time::Instant::now();
                    yield console::WatchTasksResponse { page: Some(page.clone()) };
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_task(
        &self,
        req: Request<console::GetTaskRequest>,
    ) -> Result<Response<console::TaskRow>, Status> {
        let caller = caller(&req)?;
        let view = self
            .tasks
            .get_task(&caller, &req.into_inner().task_id)
            .await?;
        Ok(Response::new(
            row(&self.tasks, &caller, &view.task, clock::now_ms()).await,
        ))
    }

    async fn get_overview(
        &self,
        req: Request<console::GetOverviewRequest>,
    ) -> Result<Response<console::GetOverviewResponse>, Status> {
        Ok(Response::new(overview(&self.tasks, &caller(&req)?).await?))
    }

    async fn get_patch(
        &self,
        req: Request<console::GetPatchRequest>,
    ) -> Result<Response<console::GetPatchResponse>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            patch(&self.tasks, &caller, &req.into_inner().task_id).await?,
        ))
    }

    async fn upload_chunk(
        &self,
        req: Request<console::UploadChunkRequest>,
    ) -> Result<Response<console::UploadChunkResponse>, Status> {
        let caller = caller(&req)?;
        let (upload_id, received, stored) = self
            .uploads
            .receive(&self.tasks, &caller, req.into_inner())
            .await?;
        Ok(Response::new(console::UploadChunkResponse {
            upload_id,
            received: u32::try_from(received).unwrap_or(u32::MAX),
            artifact: stored.as_ref().map(artifact),
        }))
    }
}

/// One page, newest first: the store pages oldest first, so the page is
/// counted back from the end.
async fn list_page(
    tasks: &TaskManager,
    caller: &Caller,
    q: &console::ListTasksRequest,
) -> Result<console::ListTasksResponse> {
    let status = match q.status.as_str() {
        "" => None,
        s => Some(TaskStatus::parse(s).ok_or_else(|| {
            Error::invalid(format!(
                "unknown status {s:?}: created, running, completed, failed or stopped"
            ))
        })?),
    };
    let page = q.page.max(1);
    let size = match q.page_size {
        n if n <= 0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let (_, total) = tasks.list_recent_tasks(caller, status, 0, Some(0)).await?;
    let end = total - i64::from(page - 1) * i64::from(size);
    let rows = if end <= 0 {
        Vec::new()
    } else {
        let start = (end - i64::from(size)).max(0);
        let (mut found, _) = tasks
            .list_recent_tasks(caller, status, end - start, Some(start))
            .await?;
        found.reverse();
        let now = clock::now_ms();
        join_all(found.iter().map(|t| row(tasks, caller, t, now))).await
    };
    Ok(console::ListTasksResponse {
        tasks: rows,
        total: i32::try_from(total).unwrap_or(i32::MAX),
        page,
        page_size: size,
    })
}

async fn row(tasks: &TaskManager, caller: &Caller, t: &Task, now: i64) -> console::TaskRow {
    let times = summary(t, now);
    let secs = |ms: Option<i64>| ms.map_or(0.0, clock::epoch_secs);
    console::TaskRow {
        task_id: t.task_id.clone(),
        dialect: t.origin.as_str().into(),
        status: t.status.as_str().into(),
        input: t.input.chars().take(INPUT_PREVIEW_CHARS).collect(),
        created_at: clock::epoch_secs(t.created_at),
        started_at: secs(t.started_at),
        finished_at: secs(t.finished_at.filter(|_| t.status.is_finished())),
        duration: times.duration,
        // A task deleted since the page was read simply shows no steps.
        steps: step_count(tasks, caller, t).await.unwrap_or(0),
        input_tokens: t.input_tokens as f64,
        output_tokens: t.output_tokens as f64,
        cost_usd: t.cost_usd,
        error: t.error.clone().unwrap_or_default(),
    }
}

/// Agent Protocol tasks count their recorded steps; a Trae run records none,
/// so its `step` events are counted.
async fn step_count(tasks: &TaskManager, caller: &Caller, t: &Task) -> Result<i32> {
    let n = match t.origin {
        Origin::AgentProtocol => tasks.list_steps(caller, &t.task_id, 0, 0).await?.1,
        Origin::Trae => {
            let (_, log) = tasks.task_messages(caller, &t.task_id).await?;
            log.iter().filter(|e| e.kind == "step").count() as i64
        }
    };
    Ok(i32::try_from(n).unwrap_or(i32::MAX))
}

async fn overview(tasks: &TaskManager, caller: &Caller) -> Result<console::GetOverviewResponse> {
    let status = tasks.runtime_status(caller).await?;
    let load = tasks.run_load();
    let count = |s: TaskStatus| {
        let n: i64 = status
            .totals
            .by_status
            .iter()
            .filter(|(st, _)| *st == s)
            .map(|(_, n)| n)
            .sum();
        i32::try_from(n).unwrap_or(i32::MAX)
    };
    let (recent, _) = tasks
        .list_recent_tasks(caller, None, USAGE_TASKS, None)
        .await?;
    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    Ok(console::GetOverviewResponse {
        created: count(TaskStatus::Created),
        running: count(TaskStatus::Running),
        completed: count(TaskStatus::Completed),
        failed: count(TaskStatus::Failed),
        stopped: count(TaskStatus::Stopped),
        runs_active: to_i32(load.running),
        runs_queued: to_i32(load.queued),
        run_slots: to_i32(load.slots),
        input_tokens: status.totals.input_tokens as f64,
        output_tokens: status.totals.output_tokens as f64,
        cost_usd: status.totals.cost_usd,
        usage: usage_buckets(&recent, clock::now_ms()),
    })
}

/// Tokens and cost of `tasks` (oldest first) by creation time, in equal
/// buckets from the oldest to `now`.
fn usage_buckets(tasks: &[Task], now: i64) -> Vec<console::UsageBucket> {
    let Some(oldest) = tasks.first().map(|t| t.created_at) else {
        return Vec::new();
    };
    // At least a second per bucket, and `now` inside the last one.
    let width = ((now - oldest) / USAGE_BUCKETS + 1).max(1000);
    let mut buckets: Vec<console::UsageBucket> = (0..USAGE_BUCKETS)
        .map(|i| console::UsageBucket {
            start_time: clock::epoch_secs(oldest + i * width),
            end_time: clock::epoch_secs(oldest + (i + 1) * width),
            ..Default::default()
        })
        .collect();
    for t in tasks {
        let i = ((t.created_at - oldest) / width).clamp(0, USAGE_BUCKETS - 1) as usize;
        let b = &mut buckets[i];
        b.tasks += 1;
        b.tokens += (t.input_tokens + t.output_tokens) as f64;
        b.cost_usd += t.cost_usd;
    }
    buckets
}

/// The file of the task's last `patch` event. agentd wrote that path, but
/// the agent may have replaced it since with a symlink to a file it must not
/// read (under `--sandbox`, the Trae config with provider keys): a path that
/// resolves elsewhere is served only when it lies inside the run's working
/// directory.
async fn patch(
    tasks: &TaskManager,
    caller: &Caller,
    task_id: &str,
) -> Result<console::GetPatchResponse> {
    let (task, log) = tasks.task_messages(caller, task_id).await?;
    let path = log
        .iter()
        .rev()
        .filter(|e| EventKind::of(e) == Some(EventKind::Patch))
        .find_map(|e| e.body.get("data")?.get("path")?.as_str().map(PathBuf::from))
        .ok_or_else(|| Error::not_found(Resource::Artifact, format!("patch of task {task_id}")))?;
    let shown = path.display().to_string();
    let gone = || Error::not_found(Resource::Artifact, shown.clone());
    let real = tokio::fs::canonicalize(&path).await.map_err(|_| gone())?;
    let working_dir = task.working_dir.map(PathBuf::from);
    let inside_working_dir = match working_dir {
        Some(dir) => tokio::fs::canonicalize(dir)
            .await
            .is_ok_and(|dir| real.starts_with(dir)),
        None => false,
    };
    if real != path && !inside_working_dir {
        return Err(Error::invalid(format!(
            "the patch {shown} now resolves outside the run's working directory; read it on the host"
        )));
    }
    let file = tokio::fs::File::open(&real).await.map_err(|_| gone())?;
    let size = file.metadata().await?.len();
    let mut bytes = Vec::new();
    file.take(MAX_PATCH_BYTES as u64)
        .read_to_end(&mut bytes)
        .await?;
    Ok(console::GetPatchResponse {
        size: u32::try_from(size).unwrap_or(u32::MAX),
        diff: String::from_utf8_lossy(&bytes).into_owned(),
        truncated: size > bytes.len() as u64,
        path: shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn task(created_at: i64, tokens: i64, cost: f64) -> Task {
        let mut t: Task =
            crate::store::Task::new("t".into(), "x".into(), Map::new(), Origin::Trae, created_at)
                .into();
        t.input_tokens = tokens;
        t.cost_usd = cost;
        t
    }

    #[test]
    fn usage_buckets_cover_oldest_to_now_and_sum_every_task() {
        let tasks = [
            task(0, 10, 0.5),
            task(1_000, 5, 0.25),
            task(239_000, 1, 0.0),
        ];
        let b = usage_buckets(&tasks, 240_000);
        assert_eq!(b.len(), USAGE_BUCKETS as usize);
        assert_eq!(b[0].start_time, 0.0);
        assert!(b.last().is_some_and(|l| l.end_time >= 240.0));
        assert_eq!(b.iter().map(|x| x.tasks).sum::<i32>(), 3);
        assert_eq!(b.iter().map(|x| x.tokens).sum::<f64>(), 16.0);
        assert_eq!(b[0].tasks, 2);
        assert_eq!(b[USAGE_BUCKETS as usize - 1].tasks, 1);
    }

    #[test]
    fn usage_buckets_of_no_tasks_are_none() {
        assert!(usage_buckets(&[], 5).is_empty());
    }
}
