//! The model's text while it streams, as `LlmDelta` events: the first piece
//! at once (the reader sees the model has started), later ones coalesced to
//! at most one event per [`INTERVAL`], the rest when the call ends. So a
//! long generation adds a few events per second to the task's log, not one
//! per token; the whole text is in the `LlmResponse` that follows.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::events::{EngineEvent, EventSink};

pub(crate) const INTERVAL: Duration = Duration::from_millis(500);

pub(crate) struct DeltaPublisher {
    events: Arc<dyn EventSink>,
    step: u32,
    /// Text not yet published, and when the last event went out.
    pending: Mutex<(String, Option<Instant>)>,
}

impl DeltaPublisher {
    pub(crate) fn new(events: Arc<dyn EventSink>, step: u32) -> Self {
        Self {
            events,
            step,
            pending: Mutex::new((String::new(), None)),
        }
    }

    pub(crate) fn push(&self, text: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.0.push_str(text);
        if pending.1.is_none_or(|last| last.elapsed() >= INTERVAL) {
            let text = std::mem::take(&mut pending.0);
            pending.1 = Some(Instant::now());
            self.emit(text);
        }
    }

    /// Publishes what is left (the call ended).
    pub(crate) fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let text = std::mem::take(&mut pending.0);
        if !text.is_empty() {
            self.emit(text);
        }
    }

    fn emit(&self, text: String) {
        self.events.emit(EngineEvent::LlmDelta {
            step: self.step,
            text,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_piece_goes_out_at_once_and_the_rest_coalesces() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let deltas = DeltaPublisher::new(Arc::new(tx), 2);
        for piece in ["Hel", "lo", ", ", "world"] {
            deltas.push(piece);
        }
        deltas.flush();
        deltas.flush();
        let mut texts = Vec::new();
        while let Ok(EngineEvent::LlmDelta { step: 2, text }) = rx.try_recv() {
            texts.push(text);
        }
        assert_eq!(texts.concat(), "Hello, world");
        assert_eq!(texts[0], "Hel");
        assert!(
            texts.len() <= 4 && texts.iter().all(|t| !t.is_empty()),
            "{texts:?}"
        );
    }
}
