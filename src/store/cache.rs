//! A bounded read cache in front of SQLite: task rows, each task's artifact
//! list and its event log, by task id. (The PostgreSQL store uses it only for
//! finished tasks' logs, which never change: see `postgres.rs`.)
//!
//! Clients poll the tasks they started far more often than those tasks
//! change, and every SQLite read costs round trips to a connection's worker
//! thread (~40 µs of CPU each, against ~10 µs for a whole empty RPC). Entries
//! are weighed by their size and the cache is capped, so stored tasks are not
//! all held in memory: a cold task is read from SQLite as before.
//!
//! Consistency: every write that touches a task invalidates that task's
//! entries once it committed, before its caller is answered. A read that
//! missed fills the cache only if no such invalidation happened since the
//! read began (a generation per stripe of task ids), so a value read before a
//! commit is never put back after that commit's invalidation.

use std::{
    hash::BuildHasher,
    sync::{Arc, Mutex},
};

use quick_cache::{Weighter, sync::Cache};

use super::{Artifact, Event, Task};

/// Generation stripes: invalidations of tasks in other stripes do not stop a
/// fill, and 64 mutexes are never contended on two cores.
const STRIPES: usize = 64;

/// What one task's entries hold, with their estimated size (the cache asks
/// for it on eviction, so it is computed once, on fill).
#[derive(Clone)]
struct Entry {
    bytes: u64,
    value: Cached,
}

#[derive(Clone)]
enum Cached {
    Task(Arc<Task>),
    Artifacts(Arc<Vec<Artifact>>),
    Events(Arc<Vec<Event>>),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Task,
    Artifacts,
    Events,
}

type Key = (Kind, String);

/// The generation of a task's stripe when a read began.
#[derive(Clone, Copy)]
pub(super) struct Stamp {
    stripe: usize,
    generation: u64,
}

pub(super) struct ReadCache {
    /// None: caching is off (capacity 0).
    entries: Option<Cache<Key, Entry, Weight>>,
    generations: Vec<Mutex<u64>>,
    hasher: std::collections::hash_map::RandomState,
}

impl ReadCache {
    /// A cache holding up to `capacity_bytes` (estimated); 0 turns it off.
    pub fn new(capacity_bytes: u64) -> Self {
        let entries = (capacity_bytes > 0).then(|| {
            // quick_cache sizes its tables from an item estimate: ~2 KiB each.
            let items = usize::try_from(capacity_bytes / 2048).unwrap_or(usize::MAX);
            Cache::with_weighter(items.max(16), capacity_bytes, Weight)
        });
        Self {
            entries,
            generations: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            hasher: Default::default(),
        }
    }

    fn stripe(&self, task_id: &str) -> usize {
        (self.hasher.hash_one(task_id) as usize) % STRIPES
    }

    /// Call before reading the task from SQLite; pass to the fill after.
    pub fn stamp(&self, task_id: &str) -> Stamp {
        let stripe = self.stripe(task_id);
        let generation = *self.generations[stripe].lock().expect("cache stripe");
        Stamp { stripe, generation }
    }

    /// Drops the task's entries; call after each write of the task committed
    /// (or failed: a dropped entry is only a miss).
    pub fn invalidate(&self, task_id: &str) {
        let Some(entries) = &self.entries else { return };
        let mut generation = self.generations[self.stripe(task_id)]
            .lock()
            .expect("cache stripe");
        *generation += 1;
        for kind in [Kind::Task, Kind::Artifacts, Kind::Events] {
            entries.remove(&(kind, task_id.to_string()));
        }
    }

    fn get(&self, kind: Kind, task_id: &str) -> Option<Cached> {
        let entry = self.entries.as_ref()?.get(&(kind, task_id.to_string()))?;
        Some(entry.value)
    }

    fn fill(&self, kind: Kind, task_id: &str, stamp: Stamp, value: Cached) {
        let Some(entries) = &self.entries else { return };
        let entry = Entry {
            bytes: (task_id.len() + size(&value)) as u64,
            value,
        };
        let generation = self.generations[stamp.stripe].lock().expect("cache stripe");
        // Holding the stripe: no invalidation can slip in between the check
        // and the insert.
        if *generation == stamp.generation {
            entries.insert((kind, task_id.to_string()), entry);
        }
    }

    pub fn task(&self, task_id: &str) -> Option<Arc<Task>> {
        match self.get(Kind::Task, task_id)? {
            Cached::Task(t) => Some(t),
            _ => None,
        }
    }

    pub fn fill_task(&self, stamp: Stamp, task: Arc<Task>) {
        let id = task.task_id.clone();
        self.fill(Kind::Task, &id, stamp, Cached::Task(task));
    }

    pub fn artifacts(&self, task_id: &str) -> Option<Arc<Vec<Artifact>>> {
        match self.get(Kind::Artifacts, task_id)? {
            Cached::Artifacts(a) => Some(a),
            _ => None,
        }
    }

    pub fn fill_artifacts(&self, task_id: &str, stamp: Stamp, artifacts: Arc<Vec<Artifact>>) {
        self.fill(
            Kind::Artifacts,
            task_id,
            stamp,
            Cached::Artifacts(artifacts),
        );
    }

    pub fn events(&self, task_id: &str) -> Option<Arc<Vec<Event>>> {
        match self.get(Kind::Events, task_id)? {
            Cached::Events(e) => Some(e),
            _ => None,
        }
    }

    pub fn fill_events(&self, task_id: &str, stamp: Stamp, events: Arc<Vec<Event>>) {
        self.fill(Kind::Events, task_id, stamp, Cached::Events(events));
    }
}

#[derive(Clone)]
struct Weight;

impl Weighter<Key, Entry> for Weight {
    fn weight(&self, _key: &Key, entry: &Entry) -> u64 {
        entry.bytes
    }
}

/// Estimated bytes of a value: its strings and JSON text, plus a fixed
/// overhead per item.
fn size(value: &Cached) -> usize {
    let map = |m: &serde_json::Map<String, serde_json::Value>| {
        m.iter()
            .map(|(k, v)| k.len() + json_len(v) + 4)
            .sum::<usize>()
    };
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    match value {
        Cached::Task(t) => {
            256 + t.input.len()
                + map(&t.additional_input)
                + t.run_spec.as_ref().map_or(0, json_len)
                + text(&t.result)
                + text(&t.error)
        }
        Cached::Artifacts(list) => list
            .iter()
            .map(|a| {
                160 + a.artifact_id.len()
                    + a.file_name.len()
                    + a.relative_path.len()
                    + a.location.len()
            })
            .sum(),
        Cached::Events(list) => list.iter().map(|e| 96 + e.kind.len() + map(&e.body)).sum(),
    }
}

/// Length of a value's JSON text, without building it.
fn json_len(v: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::store::Origin;

    fn task(id: &str, input: &str) -> Arc<Task> {
        Arc::new(Task::new(
            id.into(),
            input.into(),
            Map::new(),
            Origin::AgentProtocol,
            1,
        ))
    }

    #[test]
    fn a_fill_after_an_invalidation_is_dropped() {
        let cache = ReadCache::new(1 << 20);
        let stamp = cache.stamp("t1");
        // A write of t1 committed while the read was in SQLite.
        cache.invalidate("t1");
        cache.fill_task(stamp, task("t1", "old"));
        assert!(cache.task("t1").is_none());
        // A read that began after the write fills.
        let stamp = cache.stamp("t1");
        cache.fill_task(stamp, task("t1", "new"));
        assert_eq!(cache.task("t1").unwrap().input, "new");
        // The next write drops it.
        cache.invalidate("t1");
        assert!(cache.task("t1").is_none());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = ReadCache::new(0);
        let stamp = cache.stamp("t1");
        cache.fill_task(stamp, task("t1", "x"));
        assert!(cache.task("t1").is_none());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = ReadCache::new(64 * 1024);
        let big = "x".repeat(4096);
        for i in 0..100 {
            let id = format!("t{i}");
            cache.fill_task(cache.stamp(&id), task(&id, &big));
        }
        let held = (0..100)
            .filter(|i| cache.task(&format!("t{i}")).is_some())
            .count();
        assert!(
            held > 0 && held < 20,
            "held {held} tasks of 4 KiB in 64 KiB"
        );
    }
}
