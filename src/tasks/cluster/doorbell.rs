//! The node's one listening connection, fanned out in process: rings wake
//! followers of other nodes' logs, deliver stop requests to local runs and
//! make free slots claim queued runs. Rings carry no data: everything is
//! read back from the tables, so a lost ring costs latency, never an event.

use std::sync::{Arc, Weak};

use super::remote::reason_of;
use crate::{store::Ring, tasks::TaskManager};

pub(super) async fn run(tasks: Weak<TaskManager>, mut rings: tokio::sync::mpsc::Receiver<Ring>) {
    while let Some(ring) = rings.recv().await {
        let Some(tasks) = tasks.upgrade() else { return };
        match ring {
            Ring::Events {
                task_id,
                first,
                seq,
            } => tasks.events.ring(&task_id, first, seq).await,
            Ring::Cancel { task_id, reason } => {
                tasks.stop_in_background(&task_id, reason_of(&reason));
            }
            Ring::RunQueued => claim(&tasks),
            Ring::Reconnected => {
                tracing::info!("the database listener reconnected; followers read the logs again");
                tasks.events.ring_all();
                claim(&tasks);
            }
        }
    }
}

fn claim(tasks: &Arc<TaskManager>) {
    let tasks = tasks.clone();
    tokio::spawn(async move { tasks.claim_queued().await });
}
