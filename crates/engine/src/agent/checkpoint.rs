//! Checkpoints: what rebuilds an agent after the process that ran it died.
//!
//! The agent emits a [`CheckpointDelta`] (as [`EngineEvent::Checkpoint`])
//! twice a step that calls tools: once when the model answered (its tool
//! calls are about to run: the step is *in flight*) and once when the step
//! completed. A delta carries only the messages added since the previous
//! one, so a long conversation is never written again in full; folding the
//! deltas in order ([`Checkpoint::apply`]) gives the conversation back.
//! [`Agent::resume`](super::Agent::resume) continues from a [`Checkpoint`]:
//! completed steps are never run again, and the tool calls of a step that
//! was in flight are answered with [`INTERRUPTED_TOOL_RESULT`].
//!
//! [`EngineEvent::Checkpoint`]: crate::events::EngineEvent::Checkpoint

use serde::{Deserialize, Serialize};

use crate::messages::{Message, Usage};

/// The answer to each tool call of the step that was cut off.
pub const INTERRUPTED_TOOL_RESULT: &str = "The agent runtime was restarted while this tool call \
ran, so its effects are unknown: it may have run partly, fully or not at all. Check the state \
of the working directory before relying on it. The environment is fresh: a new shell in the \
working directory (earlier shell state such as the current directory and variables is gone).";

/// Told the model when the run resumes between steps (no tool call was cut off).
pub const RESUMED_BETWEEN_STEPS: &str = "Note: the agent runtime was restarted and this task \
resumed from its last completed step. The environment is fresh: a new shell in the working \
directory (earlier shell state such as the current directory and variables is gone); files \
written by earlier steps are kept.";

/// Running totals of a run, as of a checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointTotals {
    pub usage: Usage,
    pub cost_usd: f64,
    /// Tokens counted toward `max_tokens_total`.
    pub tokens_spent: u64,
    /// The last model call's usage (the floor of the next call's cost).
    pub last_usage: Option<Usage>,
    /// Messages already sent to the model (recorded as trajectory input).
    pub recorded: usize,
}

/// One checkpoint as written: the messages added since the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointDelta {
    /// Steps taken, this one included.
    pub step: u32,
    /// The step's tool calls were about to run (the model's answer is the
    /// last message); false once the step completed.
    pub in_flight: bool,
    /// Index in the conversation of `messages[0]`: the conversation is cut
    /// there before they are appended.
    pub first_message: usize,
    pub messages: Vec<Message>,
    pub totals: CheckpointTotals,
}

impl CheckpointDelta {
    /// This delta followed by `later`, as one: applying the result is
    /// applying both in order (the deltas of one batch of events are stored
    /// in one write).
    pub fn then(mut self, later: CheckpointDelta) -> Result<CheckpointDelta, JoinGap> {
        let end = self.first_message + self.messages.len();
        if later.first_message > end {
            let e = format!(
                "checkpoint of step {} starts at message {} but the one before ends at {end}",
                later.step, later.first_message
            );
            return Err(JoinGap {
                error: e,
                later: Box::new(later),
            });
        }
        if later.first_message < self.first_message {
            return Ok(later);
        }
        self.messages
            .truncate(later.first_message - self.first_message);
        self.messages.extend(later.messages);
        self.step = later.step;
        self.in_flight = later.in_flight;
        self.totals = later.totals;
        Ok(self)
    }
}

/// Why two deltas do not join (a gap between them), with the later one
/// given back.
#[derive(Debug)]
pub struct JoinGap {
    pub error: String,
    pub later: Box<CheckpointDelta>,
}

/// A run's state as of its last checkpoint: the deltas folded together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    pub step: u32,
    pub in_flight: bool,
    pub messages: Vec<Message>,
    pub totals: CheckpointTotals,
}

impl Checkpoint {
    /// Folds deltas, oldest first; `None` without any.
    pub fn from_deltas(
        deltas: impl IntoIterator<Item = CheckpointDelta>,
    ) -> Result<Option<Checkpoint>, String> {
        let mut state: Option<Checkpoint> = None;
        for d in deltas {
            state.get_or_insert_with(Checkpoint::default).apply(d)?;
        }
        Ok(state)
    }

    /// Adds the next delta. Fails on a gap (a delta starting past the
    /// conversation's end), which only a lost delta could cause.
    pub fn apply(&mut self, d: CheckpointDelta) -> Result<(), String> {
        if d.first_message > self.messages.len() {
            return Err(format!(
                "checkpoint of step {} starts at message {} but only {} are known",
                d.step,
                d.first_message,
                self.messages.len()
            ));
        }
        self.messages.truncate(d.first_message);
        self.messages.extend(d.messages);
        self.step = d.step;
        self.in_flight = d.in_flight;
        self.totals = d.totals;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Joined deltas fold to the same state as the deltas one by one.
    #[test]
    fn joined_deltas_fold_like_the_deltas_in_order() {
        let ds = [
            delta(1, 0, &["sys", "task", "a1"]),
            delta(1, 3, &["r1"]),
            delta(2, 4, &["a2"]),
            // A rolled-back answer replaced.
            delta(2, 4, &["a2'", "r2"]),
            delta(3, 6, &["a3"]),
        ];
        for split in 1..ds.len() {
            let joined = ds[split..]
                .iter()
                .cloned()
                .try_fold(ds[split - 1].clone(), CheckpointDelta::then)
                .unwrap();
            let mut parts = ds[..split - 1].to_vec();
            parts.push(joined);
            assert_eq!(
                Checkpoint::from_deltas(parts).unwrap(),
                Checkpoint::from_deltas(ds.clone()).unwrap(),
                "split at {split}"
            );
        }
        assert!(delta(1, 0, &["a"]).then(delta(2, 5, &["b"])).is_err());
    }

    fn delta(step: u32, first: usize, texts: &[&str]) -> CheckpointDelta {
        CheckpointDelta {
            step,
            in_flight: false,
            first_message: first,
            messages: texts.iter().map(|t| Message::user(*t)).collect(),
            totals: CheckpointTotals::default(),
        }
    }

    #[test]
    fn deltas_fold_into_the_conversation_and_a_gap_is_refused() {
        let cp = Checkpoint::from_deltas([delta(1, 0, &["a", "b"]), delta(2, 2, &["c"])])
            .unwrap()
            .unwrap();
        let texts: Vec<&str> = cp.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!((cp.step, texts), (2, vec!["a", "b", "c"]));
        // A delta may restart earlier (it replaces what follows).
        let cp = Checkpoint::from_deltas([delta(1, 0, &["a", "b"]), delta(2, 1, &["x"])])
            .unwrap()
            .unwrap();
        assert_eq!(cp.messages.len(), 2);
        assert_eq!(cp.messages[1].content, "x");
        assert!(Checkpoint::from_deltas([delta(1, 0, &["a"]), delta(2, 3, &["c"])]).is_err());
        assert_eq!(Checkpoint::from_deltas([]).unwrap(), None);
    }

    #[test]
    fn a_delta_round_trips_through_json() {
        let d = delta(3, 4, &["hello"]);
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<CheckpointDelta>(&text).unwrap(), d);
    }
}
