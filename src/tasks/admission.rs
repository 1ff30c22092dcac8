//! Admission: a fixed number of run slots shared by background runs and
//! Agent Protocol steps. When every slot is busy a new run is refused at
//! once (429, retry later) instead of queued, so a burst cannot pile up
//! work behind the limit; only a task's steps wait, behind its previous step.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::{
    error::{Error, Result},
    metrics::RunLoad,
};

/// A run slot, held for as long as the run (or step) runs; freed on drop.
pub type RunSlot = OwnedSemaphorePermit;

pub struct Admission {
    max_running: usize,
    slots: Arc<Semaphore>,
    /// Steps waiting for the previous step of their task (`/metrics`).
    queued: AtomicUsize,
}

impl Admission {
    pub fn new(max_running: usize) -> Self {
        Self {
            max_running,
            slots: Arc::new(Semaphore::new(max_running)),
            queued: AtomicUsize::new(0),
        }
    }

    /// Takes a run slot, or refuses with 429 when all are busy (503 once
    /// agentd is shutting down).
    pub fn reserve(&self) -> Result<RunSlot> {
        self.slots.clone().try_acquire_owned().map_err(|e| match e {
            TryAcquireError::Closed => {
                Error::Unavailable("agentd is shutting down; retry when it is back".into())
            }
            TryAcquireError::NoPermits => Error::InsufficientResources {
                message: format!(
                    "{} tasks are already running (the limit); retry when one finishes",
                    self.max_running
                ),
                retry_after: Some(Duration::from_secs(10)),
            },
        })
    }

    /// The next free slot, ahead of any later `reserve` (the semaphore is
    /// fair). Never returns once closed (a shutdown suspends the waiter).
    pub async fn wait(&self) -> RunSlot {
        match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => std::future::pending().await,
        }
    }

    /// Refuses every run from now on (shutdown): nothing starts that the
    /// shutdown would not see.
    pub fn close(&self) {
        self.slots.close();
    }

    /// Counts a step as queued until the guard is dropped.
    pub fn queue(&self) -> Queued<'_> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        Queued(&self.queued)
    }

    /// Runs holding a slot, steps queued behind their task's previous step.
    pub fn load(&self) -> RunLoad {
        RunLoad {
            running: self
                .max_running
                .saturating_sub(self.slots.available_permits()),
            queued: self.queued.load(Ordering::Relaxed),
            slots: self.max_running,
        }
    }
}

/// A step waiting for its task's session (see [`Admission::queue`]).
pub struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_with_429_when_every_slot_is_taken_and_counts_the_load() {
        let admission = Admission::new(2);
        let first = admission.reserve().unwrap();
        let _second = admission.reserve().unwrap();
        let refused = admission.reserve().unwrap_err();
        assert!(
            matches!(&refused, Error::InsufficientResources { message, retry_after: Some(_) }
                if message.starts_with("2 tasks are already running")),
            "{refused:?}"
        );
        let queued = admission.queue();
        assert_eq!(
            admission.load(),
            RunLoad {
                running: 2,
                queued: 1,
                slots: 2
            }
        );
        drop((first, queued));
        assert_eq!(
            admission.load(),
            RunLoad {
                running: 1,
                queued: 0,
                slots: 2
            }
        );
        // A freed slot is free for the next run.
        assert!(admission.reserve().is_ok());
        admission.close();
        assert!(matches!(admission.reserve(), Err(Error::Unavailable(_))));
    }
}
