//! The Agent Protocol document's WebSockets, served by agentd's own HTTP
//! handler (Envoy routes the upgrade here; the transcoder cannot).
//!
//! - `/ap/v1/agent/tasks/{task_id}/ws`: `status_update` messages for one task
//!   (a snapshot on connect, then one per event), closed after the task ends.
//! - `/ap/v1/agent/logs/ws`: `log` messages for every task's events, live.
//!
//! Both read the same durable event log as the SSE and gRPC streams.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    extract::{
        Path, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket, close_code},
    },
    response::Response,
    routing::get,
};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::auth::http_caller;
use crate::{
    clock,
    tasks::{Caller, EventKind, TaskManager},
    tasks::{Event, TaskStatus},
};

pub fn routes(tasks: Arc<TaskManager>) -> Router {
    Router::new()
        .route("/ap/v1/agent/tasks/{task_id}/ws", get(task_ws))
        .route("/ap/v1/agent/logs/ws", get(logs_ws))
        .with_state(tasks)
}

type Who = Option<axum::Extension<Caller>>;

async fn task_ws(
    State(tasks): State<Arc<TaskManager>>,
    caller: Who,
    Path(task_id): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let caller = match http_caller(caller, "/ap/") {
        Ok(c) => c,
        Err(refused) => return *refused,
    };
    // Refuse before upgrading, so an unknown id is a plain 404 envelope.
    let view = match tasks.get_task(&caller, &task_id).await {
        Ok(v) => v,
        Err(e) => return super::status::http_error(e, "/ap/"),
    };
    let initial = Progress::of(view.task.status);
    ws.on_upgrade(move |socket| follow_task(socket, tasks, caller, task_id, initial))
}

async fn follow_task(
    socket: WebSocket,
    tasks: Arc<TaskManager>,
    caller: Caller,
    task_id: String,
    mut progress: Progress,
) {
    let (mut tx, mut rx) = socket.split();
    let events = match tasks.follow_events(&caller, &task_id, 0).await {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut events = std::pin::pin!(events);
    // Fold the history into one snapshot, then send one update per live event.
    let mut caught_up = false;
    let snapshot_seq = tasks.last_event_seq(&task_id).await.unwrap_or(0);
    if snapshot_seq == 0 {
        caught_up = true;
        if send(&mut tx, progress.update(&task_id, None))
            .await
            .is_err()
        {
            return;
        }
    }
    loop {
        tokio::select! {
            next = events.next() => {
                let Some(Ok(event)) = next else { break };
                if EventKind::of(&event) == Some(EventKind::Heartbeat) {
                    continue;
                }
                progress.apply(&event);
                if !caught_up && event.seq < snapshot_seq {
                    continue;
                }
                caught_up = true;
                if send(&mut tx, progress.update(&task_id, Some(&event))).await.is_err() {
                    return;
                }
            }
            // The client closed (or sent something we ignore).
            msg = rx.next() => if matches!(msg, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) { return },
        }
    }
    // Ended without its task (agentd shuts down): say so, as 1012 "restart".
    let close = (!progress.finished()).then(restarting);
    let _ = tx.send(Message::Close(close)).await;
}

/// The close frame of a socket that ends because agentd shuts down.
fn restarting() -> CloseFrame {
    CloseFrame {
        code: close_code::RESTART,
        reason: "agentd is shutting down; reconnect when it is back".into(),
    }
}

async fn logs_ws(
    State(tasks): State<Arc<TaskManager>>,
    caller: Who,
    ws: WebSocketUpgrade,
) -> Response {
    let caller = match http_caller(caller, "/ap/") {
        Ok(c) => c,
        Err(refused) => return *refused,
    };
    ws.on_upgrade(move |socket| follow_logs(socket, tasks, caller))
}

/// Every task's events, or with a key that is not an admin only its own
/// tasks' (asked once per task, then remembered).
async fn follow_logs(socket: WebSocket, tasks: Arc<TaskManager>, caller: Caller) {
    let (mut tx, mut rx) = socket.split();
    let mut live = tasks.subscribe_all_events();
    let closing = tasks.streams_closing();
    let mut visible: HashMap<String, bool> = HashMap::new();
    loop {
        tokio::select! {
            () = closing.cancelled() => {
                let _ = tx.send(Message::Close(Some(restarting()))).await;
                return;
            }
            next = live.recv() => {
                let msg = match next {
                    Ok(event) => {
                        let seen = match visible.get(&event.task_id) {
                            Some(seen) => *seen,
                            None => {
                                let seen = tasks.may_see(&caller, &event.task_id).await;
                                if visible.len() > 10_000 {
                                    visible.clear();
                                }
                                visible.insert(event.task_id.clone(), seen);
                                seen
                            }
                        };
                        if !seen {
                            continue;
                        }
                        log_message(&event)
                    }
                    Err(RecvError::Lagged(n)) => json!({
                        "type": "log", "level": "WARNING", "component": "agentd",
                        "message": format!("{n} log messages were dropped: this client reads too slowly"),
                        "timestamp": clock::iso(clock::now_ms()), "task_id": null,
                    }),
                    Err(RecvError::Closed) => break,
                };
                if send(&mut tx, msg).await.is_err() {
                    return;
                }
            }
            msg = rx.next() => if matches!(msg, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) { return },
        }
    }
}

async fn send(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    msg: Value,
) -> Result<(), axum::Error> {
    tx.send(Message::Text(msg.to_string().into())).await
}

/// A task's progress as the status_update messages show it.
#[derive(Debug, Clone)]
struct Progress {
    status: &'static str,
    step: u64,
    max_steps: u64,
    current: String,
}

impl Progress {
    fn of(status: TaskStatus) -> Self {
        Self {
            status: status.as_str(),
            step: 0,
            max_steps: 0,
            current: String::new(),
        }
    }

    fn apply(&mut self, event: &Event) {
        let data = event.body.get("data");
        let num = |k: &str| data.and_then(|d| d.get(k)).and_then(Value::as_u64);
        if let Some(m) = num("max_steps") {
            self.max_steps = m;
        }
        if let Some(s) = num("step") {
            self.step = s;
        }
        match EventKind::of(event) {
            Some(EventKind::Start | EventKind::Step) => {
                self.status = "running";
                self.current = format!("step {}", self.step.max(1));
            }
            Some(EventKind::ToolCall) => {
                let tool = data
                    .and_then(|d| d.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("tool");
                self.current = format!("step {}: {tool}", self.step);
            }
            Some(EventKind::Complete) => self.status = "completed",
            Some(EventKind::Error) => self.status = "failed",
            Some(EventKind::Stopped) => self.status = "stopped",
            Some(EventKind::End) => {
                if let Some(s) = data.and_then(|d| d.get("status")).and_then(Value::as_str) {
                    self.status = TaskStatus::parse(s).map_or("failed", TaskStatus::as_str);
                }
            }
            _ => {}
        }
    }

    fn finished(&self) -> bool {
        matches!(self.status, "completed" | "failed" | "stopped")
    }

    fn update(&self, task_id: &str, event: Option<&Event>) -> Value {
        let finished = self.finished();
        let progress = if finished {
            1.0
        } else if self.max_steps > 0 {
            (self.step as f64 / self.max_steps as f64).min(1.0)
        } else {
            0.0
        };
        json!({
            "type": "status_update",
            "task_id": task_id,
            "status": self.status,
            "progress": progress,
            "current_step": self.current,
            "timestamp": clock::iso(event.map_or_else(clock::now_ms, |e| e.timestamp)),
            "seq": event.map_or(0, |e| e.seq),
            "event": event.map(|e| e.kind.as_str()),
        })
    }
}

/// One event as a `log` message: level from its kind, component from what
/// produced it.
fn log_message(e: &Event) -> Value {
    let text = |k: &str| e.body.get(k).and_then(Value::as_str);
    let data = e.body.get("data");
    let (level, component) = match EventKind::of(e) {
        Some(EventKind::Error) => ("ERROR", "task_manager".to_string()),
        Some(EventKind::StepFailed) => ("ERROR", "llm".to_string()),
        Some(EventKind::Stopped | EventKind::Nudge) => ("WARNING", "agent".to_string()),
        Some(EventKind::Interrupted | EventKind::Resumed) => {
            ("WARNING", "task_manager".to_string())
        }
        Some(EventKind::LlmResponse | EventKind::LlmDelta | EventKind::Usage) => {
            ("INFO", "llm".to_string())
        }
        Some(EventKind::ToolCall | EventKind::ToolResult) => {
            let tool = data
                .and_then(|d| d.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("tool");
            ("INFO", format!("tool:{tool}"))
        }
        Some(EventKind::Step | EventKind::Patch) => ("INFO", "agent".to_string()),
        Some(EventKind::Lakeview) => ("INFO", "lakeview".to_string()),
        _ => ("INFO", "task_manager".to_string()),
    };
    let message = text("message")
        .or_else(|| text("error"))
        .or_else(|| text("result"))
        .unwrap_or(&e.kind);
    json!({
        "type": "log",
        "level": level,
        "message": message,
        "timestamp": clock::iso(e.timestamp),
        "task_id": e.task_id,
        "component": component,
        "seq": e.seq,
        "event": e.kind,
    })
}
