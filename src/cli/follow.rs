//! Following a task's event log (TraeService.StreamTask) across dropped
//! connections: every event carries its `seq`, so after a failure the stream
//! is opened again with `after_seq` = the last one seen, and nothing is shown
//! twice or missed. Idle streams get a heartbeat every 15 s; a stream silent
//! for much longer is taken for dead.

use std::time::{Duration, Instant};

use agentd::{
    proto::{
        TaskEvent,
        ap::GetTaskRequest,
        trae::{GetTaskStatusRequest, StreamTaskRequest},
    },
    tasks::EventKind,
};
use tonic::{Status, Streaming};

use super::{
    client::{Client, is_transient},
    render::{self, Outcome},
};

/// How long to keep trying to get back to agentd after losing it.
const RECONNECT_WINDOW: Duration = Duration::from_secs(120);
/// agentd sends a heartbeat after 15 s of silence; three missed is a dead stream.
const IDLE_LIMIT: Duration = Duration::from_secs(45);

/// What following a task yields.
#[derive(Debug)]
pub enum Item {
    Event(TaskEvent),
    /// The stream is alive but idle.
    Heartbeat,
    /// The connection failed; reconnecting to resume after `after_seq`.
    Lost {
        after_seq: u32,
        why: String,
    },
    /// Following again, after `after_seq`.
    Resumed {
        after_seq: u32,
    },
}

pub struct Follower {
    client: Client,
    task_id: String,
    last_seq: u32,
    stream: Option<Streaming<TaskEvent>>,
    /// When the current outage began, and how many attempts it has seen.
    outage: Option<(Instant, u32)>,
    /// An outage whose stream reopened but has delivered nothing yet: if it
    /// fails again, the outage goes on (its clock and its pauses).
    reopened: Option<(Instant, u32)>,
    /// The task's final status, once known (from `end`, or asked for).
    pub outcome: Option<Outcome>,
    done: bool,
}

impl Follower {
    pub fn new(client: Client, task_id: &str, after_seq: u32) -> Self {
        Self {
            client,
            task_id: task_id.to_string(),
            last_seq: after_seq,
            stream: None,
            outage: None,
            reopened: None,
            outcome: None,
            done: false,
        }
    }

    pub fn last_seq(&self) -> u32 {
        self.last_seq
    }

    /// The next item; `None` once the task's log has ended.
    pub async fn next(&mut self) -> anyhow::Result<Option<Item>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(stream) = self.stream.as_mut() else {
                match self.open().await? {
                    Some(item) => return Ok(Some(item)),
                    None => continue,
                }
            };
            let received = tokio::time::timeout(IDLE_LIMIT, stream.message()).await;
            if matches!(received, Ok(Ok(Some(_)))) {
                self.reopened = None;
            }
            let why = match received {
                // Idle. agentd never ends a stream resumed past the last seq of
                // a finished log (only heartbeats come): check for that here.
                Ok(Ok(Some(ev))) if render::kind(&ev) == Some(EventKind::Heartbeat) => {
                    if self.finished_meanwhile().await {
                        self.done = true;
                        return Ok(None);
                    }
                    return Ok(Some(Item::Heartbeat));
                }
                // agentd's in-band report of a failed read (seq 0, not in the log).
                Ok(Ok(Some(ev))) if render::kind(&ev) == Some(EventKind::Error) && ev.seq == 0 => {
                    ev.error.unwrap_or_else(|| "the event stream failed".into())
                }
                Ok(Ok(Some(ev))) => {
                    if ev.seq <= self.last_seq {
                        continue; // already shown before a reconnect
                    }
                    self.last_seq = ev.seq;
                    if render::kind(&ev) == Some(EventKind::End) {
                        self.done = true;
                        self.outcome = ev
                            .data
                            .as_ref()
                            .and_then(|d| d.fields.get("status"))
                            .and_then(|v| match &v.kind {
                                Some(prost_types::value::Kind::StringValue(s)) => Outcome::parse(s),
                                _ => None,
                            });
                    }
                    return Ok(Some(Item::Event(ev)));
                }
                // A clean close without `end`: finished (agentd closes a
                // resumed stream of an ended log at once), or shutting down.
                Ok(Ok(None)) => {
                    if self.finished_meanwhile().await {
                        self.done = true;
                        return Ok(None);
                    }
                    "agentd closed the stream".to_string()
                }
                Ok(Err(status)) if is_transient(&status) => describe(&status),
                Ok(Err(status)) => {
                    return Err(anyhow::Error::new(status)
                        .context(format!("following the events of task {}", self.task_id)));
                }
                Err(_) => format!("nothing received for {}s", IDLE_LIMIT.as_secs()),
            };
            self.stream = None;
            if let Some(outage) = self.reopened.take() {
                self.outage = Some(outage);
            } else if self.outage.is_none() {
                self.outage = Some((Instant::now(), 0));
                return Ok(Some(Item::Lost {
                    after_seq: self.last_seq,
                    why,
                }));
            }
        }
    }

    /// Opens the stream (after a pause, in an outage). Returns an item to
    /// report, if any; errors once retrying is pointless.
    async fn open(&mut self) -> anyhow::Result<Option<Item>> {
        if let Some((since, attempts)) = &mut self.outage {
            if since.elapsed() > RECONNECT_WINDOW {
                return Err(anyhow::Error::new(Status::unavailable(format!(
                    "lost the connection for more than {}s",
                    RECONNECT_WINDOW.as_secs()
                )))
                .context(format!(
                    "following task {}; resume with --after-seq {}",
                    self.task_id, self.last_seq
                )));
            }
            let pause =
                Duration::from_millis(200 << (*attempts).min(5)).min(Duration::from_secs(5));
            *attempts += 1;
            tokio::time::sleep(pause).await;
        }
        let request = StreamTaskRequest {
            task_id: self.task_id.clone(),
            after_seq: (self.last_seq > 0).then_some(self.last_seq),
        };
        match self.client.trae.stream_task(request).await {
            Ok(resp) => {
                self.stream = Some(resp.into_inner());
                self.reopened = self.outage.take();
                Ok(self.reopened.map(|_| Item::Resumed {
                    after_seq: self.last_seq,
                }))
            }
            // Callers follow a task they just reached agentd about (its run,
            // its history): a failure now is the connection's, so retry it.
            Err(status) if is_transient(&status) => {
                if self.outage.is_none() {
                    self.outage = Some((Instant::now(), 0));
                    return Ok(Some(Item::Lost {
                        after_seq: self.last_seq,
                        why: describe(&status),
                    }));
                }
                Ok(None)
            }
            Err(status) => Err(anyhow::Error::new(status)
                .context(format!("following the events of task {}", self.task_id))),
        }
    }

    /// Whether the task has finished and its log holds nothing after
    /// `last_seq`; then its outcome is recorded.
    async fn finished_meanwhile(&mut self) -> bool {
        let task_id = self.task_id.clone();
        let Ok(task) = self
            .client
            .agent
            .get_task(GetTaskRequest {
                task_id: task_id.clone(),
            })
            .await
        else {
            return false;
        };
        let Some(outcome) = Outcome::parse(&task.into_inner().status) else {
            return false;
        };
        // Finished: the log ends with `end`; make sure it is not after us.
        let Ok(status) = self
            .client
            .trae
            .get_task_status(GetTaskStatusRequest { task_id })
            .await
        else {
            return false;
        };
        let last = status.into_inner().messages.iter().map(|m| m.seq).max();
        if last.is_some_and(|s| s > self.last_seq) {
            return false;
        }
        self.outcome = Some(outcome);
        true
    }
}

fn describe(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    }
}
