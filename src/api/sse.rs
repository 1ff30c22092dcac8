//! Task event streams as Server-Sent Events, served by agentd itself: Envoy
//! routes `/api/tasks/{id}/stream` and `/ap/v1/agent/tasks/{id}/events` here
//! with its transcoder off. Through the transcoder, every reader's copy of an
//! event was converted to JSON again (by agentd to protobuf, by Envoy to
//! JSON); here each event's frame is made once and shared by all readers.
//!
//! The JSON is what the transcoder printed for `agentd.v1.TaskEvent`: proto
//! field names, primitives always printed, unset optional fields left out.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State, rejection::QueryRejection},
    http::header,
    response::Response,
    routing::get,
};
use tokio_stream::StreamExt as _;

use super::event_json::Wire;
use crate::{clock, error::Error, store::Event, tasks::TaskManager};

/// Frames kept per task, and tasks kept: enough for every reader of a busy
/// task to find the frame a faster reader already made.
const FRAMES_PER_TASK: usize = 4096;
const TASKS: usize = 256;

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

async fn trae_stream(s: State<Sse>, id: Path<String>, q: Params) -> Response {
    stream(s, id, q, "/api/").await
}

async fn ap_stream(s: State<Sse>, id: Path<String>, q: Params) -> Response {
    stream(s, id, q, "/ap/").await
}

async fn stream(
    State(s): State<Sse>,
    Path(task_id): Path<String>,
    params: Params,
    dialect: &'static str,
) -> Response {
    let Ok(Query(params)) = params else {
        let e = Error::invalid("the query string is not valid");
        return super::status::http_error(e, dialect);
    };
    let after_seq = params
        .iter()
        .rev()
        .find(|(k, _)| k == "after_seq")
        .map(|(_, v)| v.parse::<u32>());
    let after_seq = match after_seq {
        None => 0,
        Some(Ok(n)) => i64::from(n),
        Some(Err(_)) => {
            let e = Error::invalid("after_seq must be a non-negative integer");
            return super::status::http_error(e, dialect);
        }
    };
    let events = match s.tasks.follow_events(&task_id, after_seq).await {
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

fn encode(wire: &Wire<'_>) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serializing borrowed strings and JSON values cannot fail.
    let _ = serde_json::to_writer(&mut out, wire);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn event_frame(e: &Event) -> Bytes {
    encode(&Wire::of(e))
}

fn failure_frame(task_id: &str) -> Bytes {
    encode(&Wire {
        r#type: "error",
        task_id,
        message: None,
        result: None,
        error: Some(super::convert::STREAM_FAILED),
        timestamp: clock::epoch_secs(clock::now_ms()),
        seq: 0,
        data: None,
    })
}

/// Frames already made, by task and seq (an event never changes once
/// written). Heartbeats repeat a seq and are never cached.
#[derive(Default)]
struct FrameCache {
    tasks: Mutex<HashMap<String, BTreeMap<i64, Bytes>>>,
}

impl FrameCache {
    fn frame(&self, e: &Event) -> Bytes {
        if e.kind == crate::tasks::events::HEARTBEAT {
            return event_frame(e);
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
                b"data: {\"type\":\"step\",\"task_id\":\"t1\",\"message\":\"Step 3\",\
                  \"timestamp\":1700000000.123,\"seq\":3,\"data\":{\"step\":3}}\n\n"
            )
        );
        // Unset optional fields and no data: left out, primitives kept.
        let bare = event(1, serde_json::json!({}));
        let text = String::from_utf8(event_frame(&bare).to_vec()).unwrap();
        assert_eq!(
            text,
            "data: {\"type\":\"step\",\"task_id\":\"t1\",\"timestamp\":1700000000.123,\"seq\":1}\n\n"
        );
    }

    #[test]
    fn a_cached_frame_is_shared_and_heartbeats_are_not_cached() {
        let cache = FrameCache::default();
        let e = event(7, serde_json::json!({"message": "x"}));
        let a = cache.frame(&e);
        let b = cache.frame(&e);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the second reader reuses the frame");
        let mut hb = event(7, serde_json::json!({}));
        hb.kind = crate::tasks::events::HEARTBEAT.into();
        assert!(cache.frame(&hb).windows(9).any(|w| w == b"heartbeat"));
        assert_eq!(cache.frame(&e), a);
    }
}
