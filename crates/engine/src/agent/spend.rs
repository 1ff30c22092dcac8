//! What a run's model calls have used, shared by the loop and lakeview
//! (which calls its model beside the loop), so that the task's totals and
//! its budget see both.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::budget;
use crate::events::{EngineEvent, EventSink};
use crate::llm;
use crate::messages::Usage;

/// Totals over every recorded call.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    pub usage: Usage,
    pub cost_usd: f64,
    /// Tokens counted toward `max_tokens_total`.
    pub tokens: u64,
}

/// One model call to record.
pub(crate) struct Call<'a> {
    pub step: u32,
    pub provider: &'a str,
    pub model: &'a str,
    pub usage: Usage,
    pub lakeview: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger(Arc<Mutex<Totals>>);

impl Ledger {
    /// Adds a call to the totals and emits its `Usage` event. The event is
    /// sent under the lock, so the totals reach the log in increasing order
    /// whichever task recorded them.
    pub fn record(&self, call: Call<'_>, events: &dyn EventSink) {
        let cost_usd = llm::estimate_cost_usd(call.provider, call.model, &call.usage);
        let mut totals = self.lock();
        totals.usage += call.usage;
        totals.cost_usd += cost_usd;
        totals.tokens += budget::call_tokens(call.provider, &call.usage);
        events.emit(EngineEvent::Usage {
            step: call.step,
            usage: call.usage,
            total: totals.usage,
            cost_usd,
            total_cost_usd: totals.cost_usd,
            lakeview: call.lakeview,
        });
    }

    pub fn totals(&self) -> Totals {
        *self.lock()
    }

    /// Starts from a checkpoint's totals (a resumed run).
    pub fn restore(&self, totals: Totals) {
        *self.lock() = totals;
    }

    fn lock(&self) -> MutexGuard<'_, Totals> {
        // Plain numbers: a panic elsewhere cannot leave them half-written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
