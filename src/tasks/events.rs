//! The per-task event log: every event gets the next `seq` and is stored
//! durably before anyone sees it; readers replay the stored history and then
//! follow live events. Reading consumes nothing, so any number of readers
//! (SSE, WebSocket, gRPC) see the same events in the same order, and a reader
//! can resume after any `seq`.
//!
//! Live fan-out is an in-process broadcast per task. With several replicas,
//! this is the seam where PostgreSQL LISTEN/NOTIFY would wake readers; they
//! already fall back to the store whenever they miss something.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::Stream;
use serde_json::Map;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::task_event::{EventKind, TaskEvent};
use crate::{
    clock,
    error::{Error, Result},
    metrics::Metrics,
    store::{Checkpoint, Event, Fence, Store, Task, TaskUsage, is_transient},
};

/// Whether `e` is the `end` that closes every finished task's log.
pub fn is_end(e: &Event) -> bool {
    e.kind == EventKind::End.as_str()
}

const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// A log shared with other nodes: how often an idle follower reads the store
/// anyway, in case a doorbell ring was lost (the last resort; rings are the
/// fast path).
const SHARED_POLL_EVERY: Duration = Duration::from_secs(5);
/// A shared database that is away (restarting, unreachable): how long reads
/// and writes of the log wait for it to come back before they fail.
const OUTAGE_WAIT: Duration = Duration::from_secs(60);
/// Events read from the store per query while replaying. Each reader that
/// fell behind holds one batch: 1,000 lagging readers of a busy task hold
/// 1,000 batches.
const REPLAY_BATCH: i64 = 100;
/// Live events buffered per task for slow readers; past this a reader
/// catches up from the store.
const LIVE_BUFFER: usize = 1024;
/// Events read back per ring from another node; more (rings were lost)
/// leave a gap that followers fill from the store.
const RELAY_MAX: i64 = 1000;
/// Readers following one task at once (SSE, WebSocket and gRPC together);
/// more are refused with 429 so one task cannot exhaust the server.
pub const MAX_FOLLOWERS_PER_TASK: usize = 5000;

pub struct EventLog {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    /// Every task's events, live only (the logs WebSocket).
    all: broadcast::Sender<Arc<Event>>,
    /// Other nodes write to the same logs (a shared database): followers
    /// also wake on rings and poll, and a log's last seq is only trusted
    /// while this node holds the task's run.
    shared: bool,
    /// The runs this node holds, by task: every append of such a task is
    /// fenced by it, and its `end` finishes the run.
    fences: Mutex<HashMap<String, Fence>>,
    /// Cancelled at shutdown: every stream ends after what is stored, so
    /// that open streams do not hold the exit up (readers reconnect after
    /// their last seq).
    closing: CancellationToken,
}

struct Topic {
    /// The last seq written; held while writing so seq order is commit order.
    last_seq: tokio::sync::Mutex<Option<i64>>,
    live: broadcast::Sender<Arc<Event>>,
    followers: AtomicUsize,
    /// Rung when followers must read the store again: another node's events
    /// could not be read back, or rings may have been lost (a version
    /// counter, so a ring is never missed).
    doorbell: tokio::sync::watch::Sender<u64>,
    /// The highest seq published live here: written by this node, or read
    /// back after another node's ring (rings up to it are news no more).
    written: AtomicI64,
}

/// What an append writes in the events' transaction besides them.
#[derive(Clone, Copy)]
enum With<'a> {
    /// The task row, when given (a run's end).
    Task(Option<&'a Task>),
    /// A run's checkpoint and the task's token usage, each when given.
    Progress {
        checkpoint: Option<&'a Checkpoint>,
        usage: Option<&'a TaskUsage>,
    },
}

/// Counts one follower of a topic for as long as its stream lives.
struct Follower(Arc<Topic>, Arc<Metrics>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::Relaxed);
        self.1.stream_followers.dec();
    }
}

impl EventLog {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            metrics,
            topics: Mutex::new(HashMap::new()),
            all: broadcast::channel(LIVE_BUFFER).0,
            shared: false,
            fences: Mutex::new(HashMap::new()),
            closing: CancellationToken::new(),
        }
    }

    /// Ends every stream (shutdown): followers send what is stored, then end.
    pub fn close_streams(&self) {
        self.closing.cancel();
    }

    /// Cancelled once streams are to end (see [`Self::close_streams`]).
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// A log other nodes write to as well (PostgreSQL shared by a cluster).
    pub fn shared(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: true,
            ..Self::new(store, metrics)
        }
    }

    /// Whether other nodes write to the same logs.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// From now on, appends to the task's log are fenced by `fence`, and
    /// its `end` finishes the run (see `store::runs`).
    pub fn hold(&self, task_id: &str, fence: Fence) {
        self.fences_mut().insert(task_id.to_string(), fence);
    }

    /// The fence of the task's run this node holds, if any.
    pub fn fence(&self, task_id: &str) -> Option<Fence> {
        self.fences_mut().get(task_id).cloned()
    }

    /// The fences of every run this node holds, by task.
    pub fn fences(&self) -> Vec<(String, Fence)> {
        let fences = self.fences_mut();
        fences.iter().map(|(t, f)| (t.clone(), f.clone())).collect()
    }

    pub fn release(&self, task_id: &str) {
        self.fences_mut().remove(task_id);
    }

    fn fences_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, Fence>> {
        self.fences.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Another node committed events `first..=seq` of the task: they are
    /// read from the store once and published live here, to the task's
    /// followers and to readers of every task's live events (the logs
    /// WebSocket). One read per ring, not one per follower: a task with 50
    /// followers on this node would otherwise cost 50 queries per commit.
    /// A follower that sees a gap (a lost ring, a failed read) catches up
    /// from the store itself, as with local events.
    pub async fn ring(&self, task_id: &str, first: i64, seq: i64) {
        let topic = self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task_id)
            .cloned();
        let published = topic
            .as_ref()
            .map_or(0, |t| t.written.load(Ordering::Relaxed));
        if seq <= published {
            return; // this node's own write, or relayed already
        }
        let followed = topic
            .as_ref()
            .is_some_and(|t| t.followers.load(Ordering::Relaxed) > 0);
        if !followed && self.all.receiver_count() == 0 {
            return;
        }
        // From what was published here, so the live stream has no gap.
        let from = if published > 0 { published } else { first - 1 };
        match self
            .store
            .list_events(task_id, from, (seq - from).min(RELAY_MAX))
            .await
        {
            Ok(events) => {
                let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
                if let Some(topic) = &topic {
                    if let Some(last) = events.last() {
                        topic.written.fetch_max(last.seq, Ordering::Relaxed);
                    }
                    for e in &events {
                        let _ = topic.live.send(e.clone());
                    }
                }
                for e in events {
                    let _ = self.all.send(e);
                }
            }
            Err(e) => {
                tracing::debug!(%task_id, error = %e, "cannot read rung events");
                if let Some(topic) = topic {
                    topic.doorbell.send_modify(|v| *v += 1);
                }
            }
        }
    }

    /// Forgets the live state of tasks nobody here follows or writes (a
    /// shared log's followers of other nodes' runs leave topics behind).
    pub fn forget_idle(&self) {
        if !self.shared {
            return;
        }
        let fences = self.fences_mut().clone();
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|task_id, topic| {
                // A writer holds `last_seq` while appending; a follower counts.
                fences.contains_key(task_id)
                    || topic.followers.load(Ordering::Relaxed) > 0
                    || topic.last_seq.try_lock().is_err()
                    || Arc::strong_count(topic) > 1
            });
    }

    /// Rings may have been lost: every follower reads the store again.
    pub fn ring_all(&self) {
        let topics: Vec<Arc<Topic>> = self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for topic in topics {
            topic.doorbell.send_modify(|v| *v += 1);
        }
    }

    fn topic(&self, task_id: &str) -> Arc<Topic> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(task_id.to_string())
            .or_insert_with(|| {
                Arc::new(Topic {
                    last_seq: tokio::sync::Mutex::new(None),
                    live: broadcast::channel(LIVE_BUFFER).0,
                    followers: AtomicUsize::new(0),
                    doorbell: tokio::sync::watch::channel(0).0,
                    written: AtomicI64::new(0),
                })
            })
            .clone()
    }

    /// Forgets the live state of a task (after its `end`, or when deleted).
    pub fn close(&self, task_id: &str) {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task_id);
    }

    /// Appends one event: stored (durably) first, then delivered to readers.
    pub async fn append(&self, task_id: &str, event: TaskEvent) -> Result<Arc<Event>> {
        let mut events = self.append_all(task_id, vec![event], None).await?;
        events
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no event appended").into())
    }

    /// Appends several events in one transaction, and with `task`, writes the
    /// task row in the same transaction: a run's final status and its last
    /// events become visible together, and a crash cannot split them.
    pub async fn append_all(
        &self,
        task_id: &str,
        entries: Vec<TaskEvent>,
        task: Option<&Task>,
    ) -> Result<Vec<Arc<Event>>> {
        self.append_inner(task_id, entries, With::Task(task)).await
    }

    /// Appends a run's progress: events (none is fine), with a checkpoint
    /// of the run (its step and JSON body) and the task's token usage when
    /// given, in one transaction (see `store::checkpoints`).
    pub async fn append_progress(
        &self,
        task_id: &str,
        entries: Vec<TaskEvent>,
        checkpoint: Option<(u32, String)>,
        usage: Option<TaskUsage>,
    ) -> Result<Vec<Arc<Event>>> {
        let checkpoint = checkpoint.map(|(step, body)| Checkpoint {
            task_id: task_id.to_string(),
            n: 0,
            step: i64::from(step),
            body,
            created_at: clock::now_ms(),
        });
        let with = With::Progress {
            checkpoint: checkpoint.as_ref(),
            usage: usage.as_ref(),
        };
        self.append_inner(task_id, entries, with).await
    }

    async fn append_inner(
        &self,
        task_id: &str,
        entries: Vec<TaskEvent>,
        with: With<'_>,
    ) -> Result<Vec<Arc<Event>>> {
        let topic = self.topic(task_id);
        let mut last = topic.last_seq.lock().await;
        let fence = self.fence(task_id);
        // Shared: another node may have written since, unless this one
        // holds the run (then nobody else can).
        let cached = (!self.shared || fence.is_some()).then_some(*last).flatten();
        let mut seq = match cached {
            Some(seq) => seq,
            None => self.store.last_event_seq(task_id).await?,
        };
        let now = clock::now_ms();
        // Shared as they are by the store and every live reader.
        let events: Vec<Arc<Event>> = entries
            .into_iter()
            .map(|event| {
                seq += 1;
                let (kind, body) = event.render();
                Arc::new(Event {
                    task_id: task_id.to_string(),
                    seq,
                    kind: kind.as_str().to_string(),
                    timestamp: now,
                    body,
                })
            })
            .collect();
        let ends = events.iter().any(|e| is_end(e));
        match &fence {
            None => _ = self.write(task_id, &events, with, None, false).await?,
            Some(fence) => {
                if !self
                    .write(task_id, &events, with, Some(fence), ends)
                    .await?
                {
                    *last = None;
                    return Err(anyhow::anyhow!(
                        "task {task_id}: this node no longer holds the task's run (its lease \
                         was taken over); the write was refused"
                    )
                    .into());
                }
                if ends {
                    self.release(task_id);
                }
            }
        }
        self.metrics.events_written.inc_by(events.len() as u64);
        *last = Some(seq);
        topic.written.fetch_max(seq, Ordering::Relaxed);
        // No receivers is fine: readers that come later replay from the store.
        for event in &events {
            let _ = topic.live.send(event.clone());
            let _ = self.all.send(event.clone());
        }
        drop(last);
        if events.iter().any(|e| is_end(e)) {
            self.close(task_id);
        }
        Ok(events)
    }

    /// Stores a batch (fenced when this node holds the task's run); false
    /// when the fence no longer holds. A shared database that is away is
    /// waited for, bounded; a retry after a commit whose answer was lost
    /// finds the batch stored and does not write it twice.
    async fn write(
        &self,
        task_id: &str,
        events: &[Arc<Event>],
        with: With<'_>,
        fence: Option<&Fence>,
        ends: bool,
    ) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + OUTAGE_WAIT;
        let mut pause = Duration::from_millis(100);
        loop {
            let written = match (fence, with) {
                // A retry may store a checkpoint twice: folding the same
                // delta again gives the same conversation (and usage is set,
                // not added).
                (_, With::Progress { checkpoint, usage }) => {
                    self.store
                        .append_progress(task_id, events, checkpoint, usage, fence)
                        .await
                }
                (None, With::Task(task)) => {
                    self.store.append_events(events, task).await.map(|()| true)
                }
                (Some(f), With::Task(task)) => {
                    self.store.append_fenced(events, task, f, ends).await
                }
            };
            match written {
                Err(e)
                    if self.shared
                        && is_transient(&e)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::warn!(error = %e, "the database is away; the event log write waits for it");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    if let Some(first) = events.first() {
                        let stored = self
                            .store
                            .list_events(&first.task_id, first.seq - 1, 1)
                            .await;
                        if let Ok(stored) = stored
                            && stored.first().is_some_and(|s| {
                                (&s.kind, s.timestamp, &s.body)
                                    == (&first.kind, first.timestamp, &first.body)
                            })
                        {
                            return Ok(true);
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Runs a read of the store; with a shared database that is away, again
    /// until it is back (bounded), so readers and a run's end outlive a
    /// database restart.
    pub async fn retrying<T, F, Fut>(&self, read: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + OUTAGE_WAIT;
        let mut pause = Duration::from_millis(100);
        loop {
            match read().await {
                Err(e)
                    if self.shared
                        && is_transient(&e)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(error = %e, "the database is away; a read waits for it");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Live events of every task, from now on. A reader that falls more than
    /// the buffer behind misses events (it is told by `Lagged`).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Event>> {
        self.all.subscribe()
    }

    /// Every event after `after_seq`, then live ones, ending after `end`.
    /// While idle, a heartbeat (never stored, carrying the last seq) keeps
    /// proxies and clients from timing the stream out.
    pub fn follow(
        self: &Arc<Self>,
        task_id: &str,
        after_seq: i64,
    ) -> Result<impl Stream<Item = Result<Arc<Event>>> + Send + 'static> {
        let topic = self.topic(task_id);
        self.metrics.stream_followers.inc();
        let follower = Follower(topic.clone(), self.metrics.clone());
        if topic.followers.fetch_add(1, Ordering::Relaxed) >= MAX_FOLLOWERS_PER_TASK {
            return Err(Error::InsufficientResources {
                message: format!(
                    "task {task_id} already has {MAX_FOLLOWERS_PER_TASK} stream readers"
                ),
                retry_after: Some(Duration::from_secs(5)),
            });
        }
        // Subscribe before reading history, so nothing falls in between.
        let mut live = topic.live.subscribe();
        let mut doorbell = topic.doorbell.subscribe();
        drop(topic);
        let wake_every = if self.shared {
            SHARED_POLL_EVERY
        } else {
            HEARTBEAT_EVERY
        };
        let log = self.clone();
        let task_id = task_id.to_string();
        let closing = self.closing.clone();
        Ok(async_stream::try_stream! {
            let _follower = follower;
            let mut last = after_seq;
            // Resuming after the `end` itself: there is nothing more to come.
            let mut closed = after_seq > 0
                && log.retrying(|| log.store.list_events(&task_id, after_seq - 1, 1)).await?.first().is_some_and(is_end);
            let mut last_sent = tokio::time::Instant::now();
            'replay: loop {
                // Rings from now on are news: mark the older ones seen first.
                doorbell.borrow_and_update();
                // Replay what the store has after `last`.
                loop {
                    let batch = log.retrying(|| log.store.list_events(&task_id, last, REPLAY_BATCH)).await?;
                    let full = batch.len() as i64 == REPLAY_BATCH;
                    for event in batch {
                        last = event.seq;
                        let ended = is_end(&event);
                        last_sent = tokio::time::Instant::now();
                        yield Arc::new(event);
                        if ended { break 'replay; }
                    }
                    if !full { break; }
                }
                if closed { break; }
                // Follow live events until a gap, a ring from another node or
                // (shared logs) the poll sends us back to the store.
                loop {
                    let next = tokio::select! {
                        got = live.recv() => Some(got),
                        // The follower holds the topic, so its doorbell stays open.
                        Ok(()) = doorbell.changed() => continue 'replay,
                        () = tokio::time::sleep(wake_every) => None,
                        // Shutdown: what is stored (anything just published
                        // included), then the end of the stream.
                        () = closing.cancelled() => {
                            closed = true;
                            continue 'replay;
                        }
                    };
                    match next {
                        None => {
                            if last_sent.elapsed() >= HEARTBEAT_EVERY - Duration::from_millis(50) {
                                last_sent = tokio::time::Instant::now();
                                yield Arc::new(heartbeat(&task_id, last));
                            }
                            if log.shared { continue 'replay; }
                        }
                        Some(Ok(event)) if event.seq <= last => {}
                        Some(Ok(event)) if event.seq == last + 1 => {
                            last = event.seq;
                            let ended = is_end(&event);
                            last_sent = tokio::time::Instant::now();
                            yield event;
                            if ended { break 'replay; }
                        }
                        // A gap or a lagging reader: catch up from the store.
                        Some(Ok(_)) | Some(Err(broadcast::error::RecvError::Lagged(_))) => continue 'replay,
                        // The task ended or was deleted: what is stored now is all there is.
                        Some(Err(broadcast::error::RecvError::Closed)) => {
                            closed = true;
                            continue 'replay;
                        }
                    }
                }
            }
        })
    }
}

fn heartbeat(task_id: &str, last_seq: i64) -> Event {
    Event {
        task_id: task_id.to_string(),
        seq: last_seq,
        kind: EventKind::Heartbeat.as_str().to_string(),
        timestamp: clock::now_ms(),
        body: Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;
    use crate::tasks::{RunnerSettings, testkit::Harness};

    fn nudge(writer: u32, i: u32) -> TaskEvent {
        TaskEvent::Nudge {
            step: writer,
            message: i.to_string(),
        }
    }

    fn seqs(events: &[Event]) -> Vec<i64> {
        events.iter().map(|e| e.seq).collect()
    }

    /// Reads the whole stream (heartbeats aside) until it ends.
    async fn read_to_end(log: &Arc<EventLog>, task_id: &str, after_seq: i64) -> Vec<Event> {
        let stream = log.follow(task_id, after_seq).unwrap();
        let read = stream
            .map(|e| e.unwrap())
            .filter(|e| std::future::ready(EventKind::of(e) != Some(EventKind::Heartbeat)))
            .map(|e| (*e).clone())
            .collect::<Vec<_>>();
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the stream ended")
    }

    /// Writers appending to one log at once: the seqs are 1..N without gaps
    /// or repeats, the store holds them in seq order, every writer got the
    /// events it wrote, and each writer's events keep the order it wrote them in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_get_consecutive_seqs() {
        let h = Harness::new(RunnerSettings::default()).await;
        h.running_task("t").await;
        const WRITERS: u32 = 8;
        const EACH: u32 = 30;
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let log = h.events.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut i = 0;
                    while i < EACH {
                        // Single appends and batches, mixed.
                        if w % 2 == 0 {
                            got.push(log.append("t", nudge(w, i)).await.unwrap());
                            i += 1;
                        } else {
                            let batch = vec![nudge(w, i), nudge(w, i + 1)];
                            got.extend(log.append_all("t", batch, None).await.unwrap());
                            i += 2;
                        }
                    }
                    got
                })
            })
            .collect();
        let mut returned = Vec::new();
        for w in writers {
            returned.extend(w.await.unwrap());
        }
        let n = i64::from(WRITERS * EACH);
        let stored = h.store.list_events("t", 0, 10_000).await.unwrap();
        assert_eq!(seqs(&stored), (1..=n).collect::<Vec<_>>());
        returned.sort_by_key(|e| e.seq);
        assert_eq!(returned.len(), stored.len());
        for (r, s) in returned.iter().zip(&stored) {
            assert_eq!((r.seq, &r.body), (s.seq, &s.body));
        }
        for w in 0..WRITERS {
            let order: Vec<String> = stored
                .iter()
                .filter(|e| e.body["data"]["step"] == w)
                .map(|e| e.body["message"].as_str().unwrap().to_string())
                .collect();
            let written: Vec<String> = (0..EACH).map(|i| i.to_string()).collect();
            assert_eq!(order, written, "writer {w}");
        }
        assert_eq!(h.store.last_event_seq("t").await.unwrap(), n);
    }

    /// A reader that comes while events are being written gets what was
    /// stored, then what follows live, in order, each once, and its stream
    /// ends after `end`; so does one resuming part-way, and one after `end`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_reader_replays_then_follows_until_end() {
        let h = Harness::new(RunnerSettings::default()).await;
        h.running_task("t").await;
        const EVENTS: u32 = 300;
        let writer = {
            let log = h.events.clone();
            tokio::spawn(async move {
                for i in 0..EVENTS {
                    log.append("t", nudge(0, i)).await.unwrap();
                }
                let end = TaskEvent::End {
                    status: crate::store::TaskStatus::Completed,
                };
                log.append("t", end).await.unwrap();
            })
        };
        // Join part-way: some events are stored, more are on their way.
        tokio::time::timeout(Duration::from_secs(60), async {
            while h.store.last_event_seq("t").await.unwrap() < 50 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        let late = read_to_end(&h.events, "t", 0).await;
        writer.await.unwrap();

        let all: Vec<i64> = (1..=i64::from(EVENTS) + 1).collect();
        assert_eq!(seqs(&late), all);
        assert!(is_end(late.last().unwrap()));
        let resumed = read_to_end(&h.events, "t", 120).await;
        assert_eq!(seqs(&resumed), all[120..].to_vec());
        let after_end = read_to_end(&h.events, "t", 0).await;
        assert_eq!(seqs(&after_end), all);
        // Resuming after the `end` itself: nothing more, and the stream ends.
        assert!(
            read_to_end(&h.events, "t", all.len() as i64)
                .await
                .is_empty()
        );
    }

    /// A log shared with another node: events that node commits reach a
    /// follower here through the ring alone (nothing is broadcast by a
    /// writer in this process), in order, with no gap, until `end`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ring_brings_another_nodes_events_to_followers() {
        let h = Harness::new(RunnerSettings::default()).await;
        h.running_task("t").await;
        let here = Arc::new(EventLog::shared(h.store.clone(), Metrics::new()));
        let other_node = EventLog::new(h.store.clone(), Metrics::new());
        let mut reader = std::pin::pin!(here.follow("t", 0).unwrap());
        for i in 0..3 {
            let e = other_node.append("t", nudge(1, i)).await.unwrap();
            here.ring("t", e.seq, e.seq).await;
            let got = tokio::time::timeout(Duration::from_secs(4), reader.next()).await;
            assert_eq!(got.expect("rung, not polled").unwrap().unwrap().seq, e.seq);
        }
        // A batch, rung once.
        let batch = vec![
            nudge(1, 7),
            TaskEvent::End {
                status: crate::store::TaskStatus::Completed,
            },
        ];
        let written = other_node.append_all("t", batch, None).await.unwrap();
        here.ring("t", written[0].seq, written[1].seq).await;
        let rest: Vec<i64> = tokio::time::timeout(
            Duration::from_secs(4),
            reader.map(|e| e.unwrap().seq).collect::<Vec<_>>(),
        )
        .await
        .expect("the stream ends after `end`");
        assert_eq!(rest, vec![4, 5]);
    }

    /// The switch from replay to live: a reader that has everything stored
    /// waits, and gets each live event as it is appended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_caught_up_gets_live_events() {
        let h = Harness::new(RunnerSettings::default()).await;
        h.running_task("t").await;
        for i in 0..3 {
            h.events.append("t", nudge(0, i)).await.unwrap();
        }
        let mut reader = std::pin::pin!(h.events.follow("t", 0).unwrap());
        let mut next = async || {
            let e = tokio::time::timeout(Duration::from_secs(60), reader.next()).await;
            e.unwrap().unwrap().unwrap().seq
        };
        for seq in 1..=3 {
            assert_eq!(next().await, seq);
        }
        for seq in 4..=5 {
            h.events.append("t", nudge(0, seq as u32)).await.unwrap();
            assert_eq!(next().await, seq);
        }
        let end = TaskEvent::End {
            status: crate::store::TaskStatus::Stopped,
        };
        h.events.append_all("t", vec![end], None).await.unwrap();
        assert_eq!(next().await, 6);
        let rest = tokio::time::timeout(Duration::from_secs(60), reader.next()).await;
        assert!(rest.unwrap().is_none(), "the stream ends after `end`");
    }
}
