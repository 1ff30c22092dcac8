//! Task event streams as Server-Sent Events, served by agentd itself: Envoy
//! routes `/api/tasks/{id}/stream` and `/ap/v1/agent/tasks/{id}/events` here
//! with its transcoder off. Through the transcoder, every reader's copy of an
//! event was converted to JSON again (by agentd to protobuf, by Envoy to
//! JSON); here each event's frame is made once and shared by all readers.
//!
//! The JSON is what the transcoder printed for `agentd.v1.TaskEvent`: proto
//! field names, primitives always printed, unset optional fields left out.
//!
//! Resuming as browsers do: every stored event's frame carries `id: <seq>`
//! and the stream opens with a `retry:` hint, so an `EventSource` that
//! reconnects on its own sends `Last-Event-ID: <seq>` and gets only what it
//! has not seen. Heartbeats and the failure frame carry no `id:` (they are not
//! events of the log; an id would move the browser's resume point).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    response::Response,
    routing::get,
};
use tokio_stream::StreamExt as _;

use super::{
    auth::http_caller,
    event_json::Wire,
    paging::{after_seq_param, last_event_id, resume_after},
};
use crate::{
    clock,
    error::Error,
    tasks::Event,
    tasks::{Caller, EventKind, TaskManager},
};

/// Frames kept per task, and tasks kept: enough for every reader of a busy
/// task to find the frame a faster reader already made.
const FRAMES_PER_TASK: usize = 4096;
const TASKS: usize = 256;

/// Sent once as `retry:` at the start of every stream: how long a browser's
/// `EventSource` waits before reconnecting after the connection drops (the
/// browsers' own default is unspecified, 3-5 s in practice). 3 s: a reader
/// is back soon after a restart or a proxy timeout, and thousands of readers
/// reconnecting at once are spread over a few seconds rather than one.
const RETRY_MS: u32 = 3000;

#[derive(Clone)]
struct Sse {
    tasks: Arc<TaskManager>,
    frames: Arc<FrameCache>,
}

pub fn routes(tasks: Arc<TaskManager>) -> Router {
    let state = Sse {
        tasks,
        frames: Arc::new(FrameCache::default()),
    };
    Router::new()
        .route("/api/tasks/{task_id}/stream", get(trae_stream))
        .route("/ap/v1/agent/tasks/{task_id}/events", get(ap_stream))
        .with_state(state)
}

/// The query string as pairs: `?after_seq=N` resumes after an event already
/// seen (the last one counts if repeated); other parameters are ignored, as
/// the transcoder did.
type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

type Who = Option<axum::Extension<Caller>>;

async fn trae_stream(s: State<Sse>, c: Who, id: Path<String>, h: HeaderMap, q: Params) -> Response {
    stream(s, c, id, h, q, "/api/").await
}

async fn ap_stream(s: State<Sse>, c: Who, id: Path<String>, h: HeaderMap, q: Params) -> Response {
    stream(s, c, id, h, q, "/ap/").await
}

async fn stream(
    State(s): State<Sse>,
    caller: Who,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    params: Params,
    dialect: &'static str,
) -> Response {
    let caller = match http_caller(caller, dialect) {
        Ok(c) => c,
        Err(refused) => return *refused,
    };
    let Ok(Query(params)) = params else {
        let e = Error::invalid("the query string is not valid");
        return super::status::http_error(e, dialect);
    };
    let (after_seq, last_event_id) = match (after_seq_param(&params), last_event_id(&headers)) {
        (Ok(q), Ok(h)) => (q, h),
        (Err(e), _) | (_, Err(e)) => return super::status::http_error(e, dialect),
    };
    let after_seq = resume_after(after_seq, last_event_id);
    // A browser that read `end` reconnects on its own (the stream closed):
    // 204 is the one answer that makes an `EventSource` stop for good.
    if last_event_id.is_some() {
        match ended_by(&s.tasks, &caller, &task_id, after_seq).await {
            Ok(true) => return no_more_events(),
            Ok(false) => {}
            Err(e) => return super::status::http_error(e, dialect),
        }
    }
    let events = match s.tasks.follow_events(&caller, &task_id, after_seq).await {
        Ok(events) => events,
        Err(e) => return super::status::http_error(e, dialect),
    };
    let frames = s.frames.clone();
    let mut failed = false;
    let frames = events.map_while(move |item| {
        if failed {
            return None;
        }
        Some(match item {
            Ok(event) => frames.frame(&event),
            Err(e) => {
                tracing::error!(%task_id, error = %e, "event stream failed");
                failed = true;
                failure_frame(&task_id)
            }
        })
    });
    let frames = tokio_stream::once(retry_frame()).chain(frames);
    // Frames that are ready together (a reader catching up) go out as one
    // write: one HTTP/2 DATA frame for Envoy to pass on instead of dozens.
    let body = futures_util::StreamExt::ready_chunks(frames, 64).map(|chunk| {
        Ok::<_, std::convert::Infallible>(match chunk.len() {
            1 => chunk.into_iter().next().unwrap_or_default(),
            _ => Bytes::from(chunk.concat()),
        })
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Whether the task's log ends with an `end` at or before `after_seq` (the
/// reader has seen everything there will ever be). Only read when the
/// reader has caught up with the log.
async fn ended_by(
    tasks: &TaskManager,
    caller: &Caller,
    task_id: &str,
    after_seq: i64,
) -> crate::error::Result<bool> {
    // Not ended: the caller's right to the task is checked by the follow.
    if after_seq == 0 || tasks.last_event_seq(task_id).await? > after_seq {
        return Ok(false);
    }
    let (_, log) = tasks.task_messages(caller, task_id).await?;
    Ok(log
        .last()
        .is_some_and(|e| EventKind::of(e) == Some(EventKind::End) && e.seq <= after_seq))
}

fn no_more_events() -> Response {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::empty())
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn retry_frame() -> Bytes {
    Bytes::from(format!("retry: {RETRY_MS}\n\n"))
}

/// One frame; `id` is the seq of a stored event, `None` for frames that are
/// not events of the log.
fn encode(id: Option<i64>, wire: &Wire<'_>) -> Bytes {
    let mut out = match id {
        Some(seq) => format!("id: {seq}\ndata: ").into_bytes(),
        None => b"data: ".to_vec(),
    };
    // Serializing borrowed strings and JSON values cannot fail.
    let _ = serde_json::to_writer(&mut out, wire);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A stored event's frame, with its seq as the SSE id.
fn event_frame(e: &Event) -> Bytes {
    encode(Some(e.seq), &Wire::of(e))
}

/// A heartbeat repeats the last seq sent but is not an event: no id.
fn heartbeat_frame(e: &Event) -> Bytes {
    encode(None, &Wire::of(e))
}

fn failure_frame(task_id: &str) -> Bytes {
    encode(
        None,
        &Wire {
            r#type: EventKind::Error.as_str(),
            task_id,
            message: None,
            result: None,
            error: Some(super::convert::STREAM_FAILED),
            timestamp: clock::epoch_secs(clock::now_ms()),
            seq: 0,
            data: None,
        },
    )
}

/// Frames already made, by task and seq (an event never changes once
/// written). Heartbeats repeat a seq and are never cached.
#[derive(Default)]
struct FrameCache {
    tasks: Mutex<HashMap<String, BTreeMap<i64, Bytes>>>,
}

impl FrameCache {
    fn frame(&self, e: &Event) -> Bytes {
        if EventKind::of(e) == Some(EventKind::Heartbeat) {
            return heartbeat_frame(e);
        }
        if let Some(hit) = self
            .lock()
            .get(e.task_id.as_str())
            .and_then(|frames| frames.get(&e.seq))
        {
            return hit.clone();
        }
        let frame = event_frame(e);
        let mut tasks = self.lock();
        if !tasks.contains_key(e.task_id.as_str()) && tasks.len() >= TASKS {
            tasks.clear();
        }
        let frames = tasks.entry(e.task_id.clone()).or_default();
        frames.insert(e.seq, frame.clone());
        if frames.len() > FRAMES_PER_TASK {
            frames.pop_first();
        }
        frame
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<i64, Bytes>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, body: serde_json::Value) -> Event {
        Event {
            task_id: "t1".into(),
            seq,
            kind: "step".into(),
            timestamp: 1_700_000_000_123,
            body: body.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn frames_print_like_the_transcoder() {
        let e = event(
            3,
            serde_json::json!({"message": "Step 3", "data": {"step": 3}}),
        );
        assert_eq!(
            event_frame(&e),
            Bytes::from_static(
                b"id: 3\ndata: {\"type\":\"step\",\"task_id\":\"t1\",\"message\":\"Step 3\",\
                  \"timestamp\":1700000000.123,\"seq\":3,\"data\":{\"step\":3}}\n\n"
            )
        );
        // Unset optional fields and no data: left out, primitives kept.
        let bare = event(1, serde_json::json!({}));
        let text = String::from_utf8(event_frame(&bare).to_vec()).unwrap();
        assert_eq!(
            text,
            "id: 1\ndata: {\"type\":\"step\",\"task_id\":\"t1\",\"timestamp\":1700000000.123,\"seq\":1}\n\n"
        );
    }

    #[test]
    fn only_stored_events_carry_an_id() {
        let mut hb = event(7, serde_json::json!({}));
        hb.kind = EventKind::Heartbeat.as_str().into();
        let text = String::from_utf8(FrameCache::default().frame(&hb).to_vec()).unwrap();
        assert!(text.starts_with("data: {\"type\":\"heartbeat\""), "{text}");
        assert!(!text.contains("id:"), "{text}");
        let failed = String::from_utf8(failure_frame("t1").to_vec()).unwrap();
        assert!(failed.starts_with("data: {\"type\":\"error\""), "{failed}");
        assert_eq!(retry_frame(), Bytes::from_static(b"retry: 3000\n\n"));
    }

    #[test]
    fn a_cached_frame_is_shared_and_heartbeats_are_not_cached() {
        let cache = FrameCache::default();
        let e = event(7, serde_json::json!({"message": "x"}));
        let a = cache.frame(&e);
        let b = cache.frame(&e);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the second reader reuses the frame");
        let mut hb = event(7, serde_json::json!({}));
        hb.kind = EventKind::Heartbeat.as_str().into();
        assert!(cache.frame(&hb).windows(9).any(|w| w == b"heartbeat"));
        assert_eq!(cache.frame(&e), a);
    }
}
