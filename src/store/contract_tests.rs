//! The store contract: one set of tests, run against both implementations
//! (`sqlite::…` on a temporary file, `postgres::…` on a database of its own in
//! a throwaway cluster, see `test_cluster`). Whatever the task layer relies on
//! from a `Store` is asserted here, so a backend that passes can replace the
//! other.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{
    Artifact, Checkpoint, DEFAULT_READ_CACHE_BYTES, DatabaseUrl, Event, Fence, NewRun, Node,
    Origin, PgStore, Ring, RunKind, RunStatus, SqliteStore, Step, Store, Task, TaskQuery,
    TaskStatus, TaskUsage, test_cluster,
};

/// One database of a backend; `open` may be called again (after the last
/// store was dropped) to reopen it, as a restarted agentd would.
#[async_trait]
pub(super) trait TestDb: Send + Sync {
    async fn open(&self) -> Arc<dyn Store>;
}

struct SqliteDb(tempfile::TempDir);

#[async_trait]
impl TestDb for SqliteDb {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(
            SqliteStore::open(&self.0.path().join("agentd.db"))
                .await
                .unwrap(),
        )
    }
}

pub(super) struct PgDb(pub DatabaseUrl);

#[async_trait]
impl TestDb for PgDb {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(
            PgStore::connect(&self.0, DEFAULT_READ_CACHE_BYTES)
                .await
                .unwrap(),
        )
    }
}

fn sqlite_db() -> SqliteDb {
    SqliteDb(tempfile::tempdir().unwrap())
}

/// A fresh database in the shared cluster; None when PostgreSQL tests are
/// skipped (AGENTD_SKIP_POSTGRES=1 without binaries).
async fn pg_db() -> Option<PgDb> {
    let cluster = test_cluster::shared()?;
    Some(PgDb(
        DatabaseUrl::parse(&cluster.fresh_database().await).unwrap(),
    ))
}

/// Each name becomes `sqlite::<name>` and `postgres::<name>`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::sqlite_db()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = super::pg_db().await {
                        super::$name(&db).await;
                    }
                }
            )*
        }
    };
}

contract!(
    tasks_round_trip_every_field,
    updates_write_what_they_say,
    a_duplicate_task_id_fails_and_keeps_the_first,
    nul_characters_never_fail_a_write,
    list_tasks_filters_pages_and_counts,
    an_owner_lists_and_counts_only_its_tasks,
    totals_follow_every_change,
    deleting_a_task_removes_everything_of_it,
    steps_are_saved_replaced_and_listed,
    artifacts_are_upserted_by_location,
    events_append_alone_or_with_the_task_row,
    a_failing_append_writes_nothing,
    a_large_batch_of_events_is_one_append,
    reads_see_every_write,
    concurrent_writes_are_all_committed_and_fail_alone,
    concurrent_creates_are_counted_by_status_and_usage,
    nodes_register_and_heartbeat,
    concurrent_claimers_never_claim_a_run_twice,
    a_holder_that_lost_its_lease_writes_nothing,
    leases_are_renewed_by_heartbeat_and_expire_without_it,
    concurrent_sweepers_take_each_expired_run_once,
    cancel_requests_are_durable_and_reach_the_holder,
    queueing_counts_the_slots_of_live_nodes,
    rings_follow_commits_of_other_connections,
    checkpoints_are_appended_with_their_events_or_not_at_all,
    stop_requests_are_durable_keep_the_first_reason_and_go_with_the_task,
    a_held_run_goes_back_to_the_queue_for_another_node,
);

// ---- fixtures ----------------------------------------------------------

fn task(id: &str, created_at: i64) -> Task {
    Task::new(
        id.into(),
        format!("input of {id}"),
        Map::new(),
        Origin::AgentProtocol,
        created_at,
    )
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn event(task_id: &str, seq: i64) -> Arc<Event> {
    Arc::new(Event {
        task_id: task_id.into(),
        seq,
        kind: if seq == 1 { "start" } else { "step" }.into(),
        timestamp: 1_000 + seq,
        body: object(json!({"message": format!("event {seq}"), "data": {"seq": seq}})),
    })
}

fn events(task_id: &str, seqs: std::ops::RangeInclusive<i64>) -> Vec<Arc<Event>> {
    seqs.map(|s| event(task_id, s)).collect()
}

fn end(task_id: &str, seq: i64) -> Arc<Event> {
    Arc::new(Event {
        kind: "end".into(),
        ..Event::clone(&event(task_id, seq))
    })
}

fn step(task_id: &str, id: &str, number: i64) -> Step {
    Step {
        step_id: id.into(),
        task_id: task_id.into(),
        number,
        name: format!("step {number}"),
        status: "completed".into(),
        state: "completed".into(),
        input: format!("do {number}"),
        additional_input: object(json!({"z": 1, "a": [true, null]})),
        output: format!("did {number}"),
        additional_output: object(json!({"state": "completed", "usage": {"input": 3}})),
        is_last: false,
        created_at: 100 + number,
    }
}

fn artifact(task_id: &str, id: &str, location: &str, created_at: i64) -> Artifact {
    let (dir, name) = location.rsplit_once('/').unwrap_or(("", location));
    Artifact {
        artifact_id: id.into(),
        task_id: task_id.into(),
        step_id: None,
        file_name: name.into(),
        relative_path: dir.into(),
        location: location.into(),
        file_size: 10,
        agent_created: false,
        created_at,
    }
}

fn all(limit: i64) -> TaskQuery {
    TaskQuery {
        limit,
        ..TaskQuery::default()
    }
}

fn seqs(events: &[Event]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

fn count(totals: &super::Totals, status: TaskStatus) -> i64 {
    totals
        .by_status
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(0, |(_, n)| *n)
}

// ---- tasks -------------------------------------------------------------

async fn tasks_round_trip_every_field(db: &dyn TestDb) {
    let store = db.open().await;
    let mut t = task("t1", 1_700_000_000_123);
    // Key order is the caller's (not sorted, as JSONB would store it).
    t.additional_input = object(json!({
        "zeta": 1, "alpha": {"nested": [1, null, true, 2.5]}, "mid": "ünï € \u{0}x \"q\"",
        "big": 9_007_199_254_740_993_i64,
    }));
    t.origin = Origin::Trae;
    t.status = TaskStatus::Running;
    t.run_spec = Some(json!({"working_dir": "/w", "provider": "openai", "max_steps": 20}));
    t.started_at = Some(1_700_000_000_200);
    t.finished_at = Some(1_700_000_000_900);
    t.result = Some("a result\nwith lines".into());
    t.error = Some("an error".into());
    t.input_tokens = 1200;
    t.output_tokens = 345;
    t.cost_usd = 0.1 + 0.2;
    store.insert_task(&t).await.unwrap();

    let got = store.get_task("t1").await.unwrap().unwrap();
    assert_eq!(got, t);
    let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&got.additional_input), ["zeta", "alpha", "mid", "big"]);
    assert_eq!(got.cost_usd.to_bits(), t.cost_usd.to_bits());
    assert!(store.get_task("t2").await.unwrap().is_none());

    // And after reopening.
    drop(store);
    let store = db.open().await;
    assert_eq!(store.get_task("t1").await.unwrap().unwrap(), t);
}

async fn updates_write_what_they_say(db: &dyn TestDb) {
    let store = db.open().await;
    let t = task("t1", 5);
    store.insert_task(&t).await.unwrap();

    // update_task: every mutable field.
    let mut u = t.clone();
    u.status = TaskStatus::Completed;
    u.run_spec = Some(json!({"provider": "anthropic"}));
    u.modified_at = 50;
    u.started_at = Some(10);
    u.finished_at = Some(40);
    u.result = Some("done".into());
    u.error = None;
    u.input_tokens = 7;
    u.output_tokens = 8;
    u.cost_usd = 0.5;
    store.update_task(&u).await.unwrap();
    assert_eq!(store.get_task("t1").await.unwrap().unwrap(), u);

    // set_usage: only the usage and modified_at.
    store.set_usage("t1", 70, 80, 1.25, 60).await.unwrap();
    let got = store.get_task("t1").await.unwrap().unwrap();
    let expected = Task {
        input_tokens: 70,
        output_tokens: 80,
        cost_usd: 1.25,
        modified_at: 60,
        ..u.clone()
    };
    assert_eq!(got, expected);

    // Updates of a task that does not exist create nothing.
    store.update_task(&task("ghost", 1)).await.unwrap();
    store.set_usage("ghost", 1, 1, 1.0, 1).await.unwrap();
    assert!(store.get_task("ghost").await.unwrap().is_none());
    assert_eq!(store.list_tasks(&all(10)).await.unwrap().1, 1);
}

async fn a_duplicate_task_id_fails_and_keeps_the_first(db: &dyn TestDb) {
    let store = db.open().await;
    store.insert_task(&task("t1", 1)).await.unwrap();
    let mut again = task("t1", 2);
    again.input = "second".into();
    assert!(store.insert_task(&again).await.is_err());
    let got = store.get_task("t1").await.unwrap().unwrap();
    assert_eq!((got.created_at, got.input.as_str()), (1, "input of t1"));
    assert_eq!(store.list_tasks(&all(10)).await.unwrap().1, 1);
}

/// SQLite keeps a NUL as it is; PostgreSQL text cannot hold one, so that
/// store writes U+FFFD instead. Either way the write succeeds: a model's
/// output with a NUL must not leave its task unfinishable.
async fn nul_characters_never_fail_a_write(db: &dyn TestDb) {
    let store = db.open().await;
    let same = |got: &str, sent: &str| got == sent || got == sent.replace('\0', "\u{FFFD}");
    let mut t = task("t1", 1);
    t.input = "in\0put".into();
    store.insert_task(&t).await.unwrap();
    t.status = TaskStatus::Failed;
    t.result = Some("re\0sult".into());
    t.error = Some("\0".into());
    store
        .append_events(&[event("t1", 1)], Some(&t))
        .await
        .unwrap();
    let got = store.get_task("t1").await.unwrap().unwrap();
    assert!(same(&got.input, "in\0put"), "{:?}", got.input);
    assert!(same(got.result.as_deref().unwrap(), "re\0sult"));
    assert!(same(got.error.as_deref().unwrap(), "\0"));
    assert_eq!(got.status, TaskStatus::Failed);

    let mut s = step("t1", "s1", 1);
    s.output = "out\0".into();
    store.save_step(&s).await.unwrap();
    let got = store.get_step("t1", "s1").await.unwrap().unwrap();
    assert!(same(&got.output, "out\0"));
}

async fn list_tasks_filters_pages_and_counts(db: &dyn TestDb) {
    let store = db.open().await;
    // 30 tasks, inserted out of order, with ties on created_at (broken by id).
    let statuses = [
        TaskStatus::Created,
        TaskStatus::Running,
        TaskStatus::Completed,
    ];
    let mut expected: Vec<(i64, String, TaskStatus)> = Vec::new();
    for i in (0..30).rev() {
        let mut t = task(&format!("t{i:02}"), 1_000 + (i / 2) * 10);
        t.status = statuses[(i % 3) as usize];
        store.insert_task(&t).await.unwrap();
        expected.push((t.created_at, t.task_id, t.status));
    }
    expected.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));

    for status in [None, Some(TaskStatus::Running), Some(TaskStatus::Failed)] {
        for created_after in [None, Some(1_070), Some(5_000)] {
            let want: Vec<&str> = expected
                .iter()
                .filter(|(at, _, st)| {
                    status.is_none_or(|s| s == *st) && created_after.is_none_or(|a| *at > a)
                })
                .map(|(_, id, _)| id.as_str())
                .collect();
            let what = format!("status {status:?}, created_after {created_after:?}");
            // Paged by 4, the pages put together are the whole list, in order.
            let mut got = Vec::new();
            for offset in (0..=want.len() as i64).step_by(4) {
                let q = TaskQuery {
                    owner: None,
                    status,
                    created_after,
                    offset,
                    limit: 4,
                };
                let (page, total) = store.list_tasks(&q).await.unwrap();
                assert_eq!(total, want.len() as i64, "{what}");
                assert!(page.len() <= 4, "{what}");
                got.extend(page.into_iter().map(|t| t.task_id));
            }
            assert_eq!(got, want, "{what}");
            // Past the end, and a zero limit: nothing, with the same total.
            let q = TaskQuery {
                owner: None,
                status,
                created_after,
                offset: 1_000,
                limit: 10,
            };
            assert_eq!(
                store.list_tasks(&q).await.unwrap(),
                (vec![], want.len() as i64)
            );
            let q = TaskQuery {
                owner: None,
                status,
                created_after,
                offset: 0,
                limit: 0,
            };
            assert_eq!(store.list_tasks(&q).await.unwrap().1, want.len() as i64);
        }
    }
    // The rows are whole tasks.
    let (page, _) = store.list_tasks(&all(1)).await.unwrap();
    assert_eq!(
        page,
        [store.get_task(&expected[0].1).await.unwrap().unwrap()]
    );
}

async fn an_owner_lists_and_counts_only_its_tasks(db: &dyn TestDb) {
    let store = db.open().await;
    for (i, owner) in [
        Some("alice"),
        Some("bob"),
        Some("alice"),
        None,
        Some("alice"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut t = task(&format!("t{i}"), 100 + i as i64);
        t.owner = owner.map(str::to_string);
        t.input_tokens = 10;
        if i == 2 {
            t.status = TaskStatus::Completed;
        }
        store.insert_task(&t).await.unwrap();
    }
    assert_eq!(
        store
            .get_task("t1")
            .await
            .unwrap()
            .unwrap()
            .owner
            .as_deref(),
        Some("bob")
    );
    let of =
        |owner: &str, status: Option<TaskStatus>, created_after: Option<i64>, offset| TaskQuery {
            owner: Some(owner.into()),
            status,
            created_after,
            offset,
            limit: 2,
        };
    let ids = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.task_id).collect::<Vec<_>>();
    let (page, total) = store.list_tasks(&of("alice", None, None, 0)).await.unwrap();
    assert_eq!((ids(page), total), (vec!["t0".to_string(), "t2".into()], 3));
    let (page, total) = store.list_tasks(&of("alice", None, None, 2)).await.unwrap();
    assert_eq!((ids(page), total), (vec!["t4".to_string()], 3));
    let (page, total) = store
        .list_tasks(&of("alice", Some(TaskStatus::Completed), None, 0))
        .await
        .unwrap();
    assert_eq!((ids(page), total), (vec!["t2".to_string()], 1));
    let (page, total) = store
        .list_tasks(&of("alice", Some(TaskStatus::Created), Some(100), 0))
        .await
        .unwrap();
    assert_eq!((ids(page), total), (vec!["t4".to_string()], 1));
    let (page, total) = store.list_tasks(&of("carol", None, None, 0)).await.unwrap();
    assert_eq!((page.len(), total), (0, 0));
    let alice = store.totals_of("alice").await.unwrap();
    assert_eq!(count(&alice, TaskStatus::Created), 2);
    assert_eq!(count(&alice, TaskStatus::Completed), 1);
    assert_eq!(alice.input_tokens, 30);
    assert_eq!(
        count(&store.totals_of("bob").await.unwrap(), TaskStatus::Created),
        1
    );
    assert_eq!(store.totals_of("carol").await.unwrap().by_status.len(), 0);
    assert_eq!(
        store.list_tasks(&all(10)).await.unwrap().1,
        5,
        "no owner: every task"
    );
}

async fn totals_follow_every_change(db: &dyn TestDb) {
    let store = db.open().await;
    let empty = store.totals().await.unwrap();
    assert_eq!(
        (empty.input_tokens, empty.output_tokens, empty.cost_usd),
        (0, 0, 0.0)
    );
    assert!(TaskStatus::ALL.iter().all(|s| count(&empty, *s) == 0));

    for i in 0..4 {
        store.insert_task(&task(&format!("t{i}"), i)).await.unwrap();
    }
    let mut t0 = store.get_task("t0").await.unwrap().unwrap();
    t0.status = TaskStatus::Running;
    store.update_task(&t0).await.unwrap();
    store.set_usage("t0", 100, 10, 0.5, 9).await.unwrap();
    // Finished with its last events, in one write.
    t0 = store.get_task("t0").await.unwrap().unwrap();
    t0.status = TaskStatus::Completed;
    t0.input_tokens = 150;
    store
        .append_events(&[event("t0", 1), end("t0", 2)], Some(&t0))
        .await
        .unwrap();
    store.set_usage("t1", 5, 6, 0.25, 9).await.unwrap();
    // Back and forth: running again, then stopped.
    let mut t2 = store.get_task("t2").await.unwrap().unwrap();
    for status in [
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Running,
    ] {
        t2.status = status;
        store.update_task(&t2).await.unwrap();
    }
    t2.status = TaskStatus::Stopped;
    store.update_task(&t2).await.unwrap();
    assert!(store.delete_task("t3").await.unwrap());

    let check = |totals: &super::Totals| {
        let by: BTreeMap<&str, i64> = TaskStatus::ALL
            .iter()
            .map(|s| (s.as_str(), count(totals, *s)))
            .collect();
        assert_eq!(
            by,
            BTreeMap::from([
                ("created", 1),
                ("running", 0),
                ("completed", 1),
                ("failed", 0),
                ("stopped", 1)
            ])
        );
        assert_eq!((totals.input_tokens, totals.output_tokens), (155, 16));
        assert!((totals.cost_usd - 0.75).abs() < 1e-9, "{}", totals.cost_usd);
    };
    check(&store.totals().await.unwrap());
    assert_eq!(store.list_tasks(&all(0)).await.unwrap().1, 3);
    let completed = TaskQuery {
        status: Some(TaskStatus::Completed),
        ..all(10)
    };
    assert_eq!(store.list_tasks(&completed).await.unwrap().1, 1);
    drop(store);
    check(&db.open().await.totals().await.unwrap());
}

async fn deleting_a_task_removes_everything_of_it(db: &dyn TestDb) {
    let store = db.open().await;
    store.insert_task(&task("t1", 1)).await.unwrap();
    store.insert_task(&task("keep", 2)).await.unwrap();
    store.save_step(&step("t1", "s1", 1)).await.unwrap();
    store.save_step(&step("keep", "k1", 1)).await.unwrap();
    let mut a = artifact("t1", "a1", "out/a.txt", 3);
    a.step_id = Some("s1".into());
    store.upsert_artifact(&a, Some("s1")).await.unwrap();
    store
        .upsert_artifact(&artifact("keep", "ka", "k.txt", 3), Some("k1"))
        .await
        .unwrap();
    store
        .append_events(&events("t1", 1..=3), None)
        .await
        .unwrap();
    store
        .append_events(&events("keep", 1..=2), None)
        .await
        .unwrap();
    assert_eq!(store.event_log("t1").await.unwrap().len(), 3);

    assert!(store.delete_task("t1").await.unwrap());
    assert!(store.get_task("t1").await.unwrap().is_none());
    assert_eq!(store.list_steps("t1", 0, 10).await.unwrap(), (vec![], 0));
    assert!(store.get_step("t1", "s1").await.unwrap().is_none());
    assert_eq!(
        store.list_artifacts("t1", 0, 10).await.unwrap(),
        (vec![], 0)
    );
    assert!(store.get_artifact("t1", "a1").await.unwrap().is_none());
    assert!(
        store
            .artifacts_of_steps(&["s1".into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.last_event_seq("t1").await.unwrap(), 0);
    assert!(store.list_events("t1", 0, 10).await.unwrap().is_empty());
    assert!(store.event_log("t1").await.unwrap().is_empty());
    assert!(!store.delete_task("t1").await.unwrap());

    // The other task is untouched.
    assert_eq!(store.list_tasks(&all(10)).await.unwrap().1, 1);
    assert_eq!(store.list_steps("keep", 0, 10).await.unwrap().1, 1);
    assert_eq!(
        store
            .artifacts_of_steps(&["k1".into()])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.last_event_seq("keep").await.unwrap(), 2);

    // The id can be used again, with a log from seq 1.
    store.insert_task(&task("t1", 9)).await.unwrap();
    store
        .append_events(&events("t1", 1..=1), None)
        .await
        .unwrap();
    assert_eq!(seqs(&store.event_log("t1").await.unwrap()), [1]);
}

// ---- steps and artifacts ----------------------------------------------------

async fn steps_are_saved_replaced_and_listed(db: &dyn TestDb) {
    let store = db.open().await;
    store.insert_task(&task("t1", 1)).await.unwrap();
    store.insert_task(&task("t2", 1)).await.unwrap();
    for (id, n) in [("s3", 3), ("s1", 1), ("s2", 2)] {
        store.save_step(&step("t1", id, n)).await.unwrap();
    }
    store.save_step(&step("t2", "other", 1)).await.unwrap();

    let (page, total) = store.list_steps("t1", 0, 10).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(
        page.iter().map(|s| s.step_id.as_str()).collect::<Vec<_>>(),
        ["s1", "s2", "s3"]
    );
    assert_eq!(page[1], step("t1", "s2", 2));
    let (page, total) = store.list_steps("t1", 1, 1).await.unwrap();
    assert_eq!((page[0].step_id.as_str(), total), ("s2", 3));
    assert_eq!(store.list_steps("t1", 0, 0).await.unwrap(), (vec![], 3));
    assert!(store.get_step("t2", "s1").await.unwrap().is_none());

    // Saving a step again replaces it and keeps its artifact links.
    store
        .upsert_artifact(&artifact("t1", "a1", "f.txt", 5), Some("s2"))
        .await
        .unwrap();
    let mut s2 = step("t1", "s2", 2);
    s2.status = "running".into();
    s2.output = "changed".into();
    s2.is_last = true;
    s2.additional_output = object(json!({"b": 2, "a": 1}));
    store.save_step(&s2).await.unwrap();
    assert_eq!(store.get_step("t1", "s2").await.unwrap().unwrap(), s2);
    assert_eq!(store.list_steps("t1", 0, 10).await.unwrap().1, 3);
    let linked = store.artifacts_of_steps(&["s2".into()]).await.unwrap();
    assert_eq!(linked.len(), 1, "the re-saved step lost its artifacts");
}

async fn artifacts_are_upserted_by_location(db: &dyn TestDb) {
    let store = db.open().await;
    store.insert_task(&task("t1", 1)).await.unwrap();
    store.insert_task(&task("t2", 1)).await.unwrap();
    store.save_step(&step("t1", "s1", 1)).await.unwrap();
    store.save_step(&step("t1", "s2", 2)).await.unwrap();

    let mut first = artifact("t1", "a1", "out/report.txt", 10);
    first.step_id = Some("s1".into());
    first.agent_created = true;
    let stored = store.upsert_artifact(&first, Some("s1")).await.unwrap();
    assert_eq!(stored, first);

    // The same location again (a later step changed the file): the id, step
    // and creation time stay; what describes the file changes.
    let mut again = artifact("t1", "a-new", "out/report.txt", 20);
    again.step_id = Some("s2".into());
    again.file_size = 99;
    again.relative_path = "out/".into();
    let stored = store.upsert_artifact(&again, Some("s2")).await.unwrap();
    let expected = Artifact {
        file_size: 99,
        relative_path: "out/".into(),
        agent_created: false,
        ..first.clone()
    };
    assert_eq!(stored, expected);
    assert_eq!(
        store.get_artifact("t1", "a1").await.unwrap().unwrap(),
        expected
    );
    assert!(store.get_artifact("t1", "a-new").await.unwrap().is_none());
    // Linking twice to one step is one link.
    store.upsert_artifact(&again, Some("s2")).await.unwrap();
    // Both steps list it.
    let linked = store
        .artifacts_of_steps(&["s1".into(), "s2".into(), "nope".into()])
        .await
        .unwrap();
    let mut pairs: Vec<(String, String)> = linked
        .into_iter()
        .map(|(s, a)| (s, a.artifact_id))
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [("s1".into(), "a1".into()), ("s2".into(), "a1".into())]
    );
    assert!(store.artifacts_of_steps(&[]).await.unwrap().is_empty());

    // Another location is another artifact; the same location in another task too.
    store
        .upsert_artifact(&artifact("t1", "b", "b.txt", 5), None)
        .await
        .unwrap();
    store
        .upsert_artifact(&artifact("t1", "c", "c.txt", 30), None)
        .await
        .unwrap();
    let other = store
        .upsert_artifact(&artifact("t2", "x", "out/report.txt", 1), None)
        .await
        .unwrap();
    assert_eq!(other.artifact_id, "x");

    let (page, total) = store.list_artifacts("t1", 0, 10).await.unwrap();
    assert_eq!(total, 3);
    let ids = |list: &[Artifact]| {
        list.iter()
            .map(|a| a.artifact_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&page), ["b", "a1", "c"]); // creation order
    let (page, total) = store.list_artifacts("t1", 1, 1).await.unwrap();
    assert_eq!((ids(&page), total), (vec!["a1".to_string()], 3));
    let both = store
        .artifacts_of(&["t1".into(), "t2".into()])
        .await
        .unwrap();
    assert_eq!(ids(&both), ["x", "b", "a1", "c"]);
    assert_eq!(
        ids(&store.artifacts_of(&["t2".into()]).await.unwrap()),
        ["x"]
    );
    assert!(store.artifacts_of(&[]).await.unwrap().is_empty());
    assert!(store.get_artifact("t2", "a1").await.unwrap().is_none());

    assert!(store.delete_artifact("t1", "a1").await.unwrap());
    assert!(!store.delete_artifact("t1", "a1").await.unwrap());
    assert!(!store.delete_artifact("t2", "b").await.unwrap());
    assert!(
        store
            .artifacts_of_steps(&["s1".into(), "s2".into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list_artifacts("t1", 0, 10).await.unwrap().1, 2);
}

// ---- events ------------------------------------------------------------

async fn events_append_alone_or_with_the_task_row(db: &dyn TestDb) {
    let store = db.open().await;
    store.insert_task(&task("t1", 1)).await.unwrap();
    store.insert_task(&task("t2", 1)).await.unwrap();
    assert_eq!(store.last_event_seq("t1").await.unwrap(), 0);
    assert_eq!(store.last_event_seq("missing").await.unwrap(), 0);

    store
        .append_events(&events("t1", 1..=3), None)
        .await
        .unwrap();
    store
        .append_events(&events("t2", 1..=1), None)
        .await
        .unwrap();
    assert_eq!(store.last_event_seq("t1").await.unwrap(), 3);

    // The run's end: its last events and final status in one write.
    let mut t = store.get_task("t1").await.unwrap().unwrap();
    t.status = TaskStatus::Completed;
    t.result = Some("ok".into());
    t.finished_at = Some(77);
    store
        .append_events(&[event("t1", 4), end("t1", 5)], Some(&t))
        .await
        .unwrap();
    assert_eq!(store.get_task("t1").await.unwrap().unwrap(), t);
    assert_eq!(store.last_event_seq("t1").await.unwrap(), 5);

    let log = store.event_log("t1").await.unwrap();
    assert_eq!(seqs(&log), [1, 2, 3, 4, 5]);
    assert_eq!(log[1], *event("t1", 2));
    assert_eq!(log[4].kind, "end");
    let keys: Vec<&String> = log[0].body.keys().collect();
    assert_eq!(keys, ["message", "data"]);
    assert_eq!(seqs(&store.list_events("t1", 2, 2).await.unwrap()), [3, 4]);
    assert_eq!(
        seqs(&store.list_events("t1", 0, 100).await.unwrap()),
        [1, 2, 3, 4, 5]
    );
    assert!(store.list_events("t1", 5, 10).await.unwrap().is_empty());
    assert!(store.list_events("t1", 0, 0).await.unwrap().is_empty());
    assert_eq!(seqs(&store.event_log("t2").await.unwrap()), [1]);

    // The task row alone, with no event.
    t.result = Some("edited".into());
    store.append_events(&[], Some(&t)).await.unwrap();
    assert_eq!(
        store
            .get_task("t1")
            .await
            .unwrap()
            .unwrap()
            .result
            .as_deref(),
        Some("edited")
    );

    drop(store);
    let store = db.open().await;
    assert_eq!(seqs(&store.event_log("t1").await.unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(store.last_event_seq("t1").await.unwrap(), 5);
}

async fn a_failing_append_writes_nothing(db: &dyn TestDb) {
    let store = db.open().await;
    let mut t = task("t1", 1);
    t.status = TaskStatus::Running;
    store.insert_task(&t).await.unwrap();
    store
        .append_events(&events("t1", 1..=2), None)
        .await
        .unwrap();

    // seq 2 exists: the whole batch fails, its task row write too.
    let mut done = t.clone();
    done.status = TaskStatus::Completed;
    let clash = [event("t1", 3), event("t1", 2)];
    assert!(store.append_events(&clash, Some(&done)).await.is_err());
    let clash = events("t1", 2..=4);
    assert!(store.append_events(&clash, Some(&done)).await.is_err());
    assert_eq!(
        store.get_task("t1").await.unwrap().unwrap().status,
        TaskStatus::Running
    );
    assert_eq!(store.last_event_seq("t1").await.unwrap(), 2);
    assert_eq!(seqs(&store.event_log("t1").await.unwrap()), [1, 2]);
    assert_eq!(store.totals().await.unwrap().by_status.len(), 5);
    assert_eq!(
        count(&store.totals().await.unwrap(), TaskStatus::Completed),
        0
    );

    // A task that does not exist takes no events.
    assert!(
        store
            .append_events(&events("ghost", 1..=2), None)
            .await
            .is_err()
    );
    assert!(store.event_log("ghost").await.unwrap().is_empty());

    // The log goes on from where it was.
    store
        .append_events(&events("t1", 3..=3), Some(&done))
        .await
        .unwrap();
    assert_eq!(seqs(&store.event_log("t1").await.unwrap()), [1, 2, 3]);
}

async fn a_large_batch_of_events_is_one_append(db: &dyn TestDb) {
    let store = db.open().await;
    store.insert_task(&task("t1", 1)).await.unwrap();
    store
        .append_events(&events("t1", 1..=1000), None)
        .await
        .unwrap();
    let log = store.event_log("t1").await.unwrap();
    assert_eq!(seqs(&log), (1..=1000).collect::<Vec<_>>());
    assert_eq!(log[999], *event("t1", 1000));
    assert_eq!(store.last_event_seq("t1").await.unwrap(), 1000);
}

/// Reads after each kind of write see the write, although earlier reads may
/// have put the task, its artifacts and its log in a cache.
async fn reads_see_every_write(db: &dyn TestDb) {
    let store = db.open().await;
    store.insert_task(&task("t1", 1)).await.unwrap();
    let ids = ["t1".to_string()];
    assert_eq!(
        store.get_task("t1").await.unwrap().unwrap().status,
        TaskStatus::Created
    );
    assert!(store.artifacts_of(&ids).await.unwrap().is_empty());
    assert!(store.event_log("t1").await.unwrap().is_empty());

    let mut t = store.get_task("t1").await.unwrap().unwrap();
    t.status = TaskStatus::Running;
    store.update_task(&t).await.unwrap();
    assert_eq!(
        store.get_task("t1").await.unwrap().unwrap().status,
        TaskStatus::Running
    );
    store.set_usage("t1", 7, 8, 0.25, 2).await.unwrap();
    assert_eq!(store.get_task("t1").await.unwrap().unwrap().input_tokens, 7);

    store
        .append_events(&events("t1", 1..=2), None)
        .await
        .unwrap();
    assert_eq!(store.event_log("t1").await.unwrap().len(), 2);
    assert_eq!(seqs(&store.list_events("t1", 1, 10).await.unwrap()), [2]);
    t = store.get_task("t1").await.unwrap().unwrap();
    t.status = TaskStatus::Completed;
    store
        .append_events(&[end("t1", 3)], Some(&t))
        .await
        .unwrap();
    assert_eq!(store.event_log("t1").await.unwrap().len(), 3);
    // A finished log, read twice (cached), sliced.
    assert_eq!(store.event_log("t1").await.unwrap().len(), 3);
    assert_eq!(seqs(&store.list_events("t1", 2, 10).await.unwrap()), [3]);
    assert_eq!(seqs(&store.list_events("t1", 0, 2).await.unwrap()), [1, 2]);
    assert_eq!(
        store.get_task("t1").await.unwrap().unwrap().status,
        TaskStatus::Completed
    );

    store
        .upsert_artifact(&artifact("t1", "a1", "f.txt", 5), None)
        .await
        .unwrap();
    assert_eq!(store.artifacts_of(&ids).await.unwrap().len(), 1);
    assert!(store.delete_artifact("t1", "a1").await.unwrap());
    assert!(store.artifacts_of(&ids).await.unwrap().is_empty());

    assert!(store.delete_task("t1").await.unwrap());
    assert!(store.get_task("t1").await.unwrap().is_none());
    assert!(store.event_log("t1").await.unwrap().is_empty());
    assert!(store.list_events("t1", 0, 10).await.unwrap().is_empty());
}

/// Many writers at once (tasks inserted, logs appended, usage recorded), as
/// the runner and the API produce them: every acknowledged write is there,
/// also after reopening the store; one failing write (a duplicate id) fails
/// alone.
async fn concurrent_writes_are_all_committed_and_fail_alone(db: &dyn TestDb) {
    let store = db.open().await;
    let mut writes = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        writes.push(tokio::spawn(async move {
            store.insert_task(&task(&format!("t{i:03}"), i)).await
        }));
    }
    let duplicate = {
        let store = store.clone();
        tokio::spawn(async move { store.insert_task(&task("t007", 1000)).await })
    };
    let mut ok = 0;
    for w in writes {
        ok += usize::from(w.await.unwrap().is_ok());
    }
    let dup_ok = duplicate.await.unwrap().is_ok();
    // Exactly one of the two t007 writes wins; every other write commits.
    assert_eq!(ok + usize::from(dup_ok), 200);
    let stored = store.get_task("t007").await.unwrap().unwrap();
    assert_eq!(stored.created_at, if dup_ok { 1000 } else { 7 });

    // 20 tasks' logs appended at once (each log by one writer, as EventLog
    // does), with usage updates of the same tasks in between.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for i in 0..20 {
        let (store, acked) = (store.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let id = format!("t{i:03}");
            for batch in 0..10 {
                let first = batch * 3 + 1;
                store
                    .append_events(&events(&id, first..=first + 2), None)
                    .await
                    .unwrap();
                store
                    .set_usage(&id, batch, batch, 0.0, batch)
                    .await
                    .unwrap();
                acked.lock().unwrap().push((id.clone(), first + 2));
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(acked.lock().unwrap().len(), 200);

    drop(store);
    let store = db.open().await;
    let (all_tasks, total) = store.list_tasks(&all(1000)).await.unwrap();
    assert_eq!((total, all_tasks.len()), (200, 200));
    for i in 0..20 {
        let id = format!("t{i:03}");
        assert_eq!(
            seqs(&store.event_log(&id).await.unwrap()),
            (1..=30).collect::<Vec<_>>(),
            "{id}"
        );
        assert_eq!(store.get_task(&id).await.unwrap().unwrap().input_tokens, 9);
    }
    let totals = store.totals().await.unwrap();
    assert_eq!(count(&totals, TaskStatus::Created), 200);
    assert_eq!(totals.input_tokens, 20 * 9);
}

/// Creates arriving together (PostgreSQL inserts them in one statement)
/// with every status and usage: the counts and sums are exact, and a bad row
/// among them (a duplicate id) fails alone.
async fn concurrent_creates_are_counted_by_status_and_usage(db: &dyn TestDb) {
    let store = db.open().await;
    let mut creates = Vec::new();
    for i in 0..150_i64 {
        let store = store.clone();
        creates.push(tokio::spawn(async move {
            // Every tenth is a duplicate of the create before it.
            let id = format!("t{:03}", if i % 10 == 9 { i - 1 } else { i });
            let mut t = task(&id, i);
            t.status = TaskStatus::ALL[i as usize % TaskStatus::ALL.len()];
            t.input_tokens = i;
            t.output_tokens = 1;
            t.cost_usd = 0.5;
            (t.clone(), store.insert_task(&t).await.is_ok())
        }));
    }
    let mut stored = BTreeMap::new();
    for c in creates {
        let (t, ok) = c.await.unwrap();
        if ok {
            assert!(stored.insert(t.task_id.clone(), t).is_none(), "two wins");
        }
    }
    assert_eq!(stored.len(), 135);
    for t in stored.values() {
        assert_eq!(&store.get_task(&t.task_id).await.unwrap().unwrap(), t);
    }
    let totals = store.totals().await.unwrap();
    for s in TaskStatus::ALL {
        let n = stored.values().filter(|t| t.status == s).count() as i64;
        assert_eq!(count(&totals, s), n, "{s:?}");
    }
    let input: i64 = stored.values().map(|t| t.input_tokens).sum();
    assert_eq!((totals.input_tokens, totals.output_tokens), (input, 135));
    assert!((totals.cost_usd - 67.5).abs() < 1e-9, "{}", totals.cost_usd);
    assert_eq!(store.list_tasks(&all(0)).await.unwrap().1, 135);
}

// ---- nodes and runs ----------------------------------------------------

fn node(id: &str, slots: i64, heartbeat_at: i64) -> Node {
    Node {
        node_id: id.into(),
        address: format!("127.0.0.1:{}", 50_000 + slots),
        slots,
        started_at: 1,
        heartbeat_at,
    }
}

/// A run of `task_id` (whose id is `r-<task_id>`), claimed by `by` until
/// `lease_until`, or queued.
fn new_run(task_id: &str, by: Option<(&str, i64)>, created_at: i64) -> NewRun {
    NewRun {
        run_id: format!("r-{task_id}"),
        task_id: task_id.into(),
        kind: RunKind::Trae,
        claimed_by: by.map(|(n, l)| (n.to_string(), l)),
        busy: true,
        spec: Some(json!({"task": task_id, "working_dir": "/w"})),
        created_at,
    }
}

async fn nodes_register_and_heartbeat(db: &dyn TestDb) {
    let store = db.open().await;
    store.register_node(&node("a", 2, 100)).await.unwrap();
    store.register_node(&node("b", 3, 50)).await.unwrap();
    assert_eq!(store.live_nodes(0).await.unwrap().len(), 2);
    assert_eq!(store.live_nodes(60).await.unwrap(), vec![node("a", 2, 100)]);
    // A restarted node registers again: one row, its new settings.
    store.register_node(&node("b", 4, 200)).await.unwrap();
    store.renew_leases("a", 300, 1300).await.unwrap();
    let live = store.live_nodes(150).await.unwrap();
    assert_eq!(
        live.iter()
            .map(|n| (n.node_id.as_str(), n.slots, n.heartbeat_at))
            .collect::<Vec<_>>(),
        vec![("a", 2, 300), ("b", 4, 200)]
    );
}

/// Eight claimers race for 60 queued runs: each run is claimed exactly once,
/// oldest first per claimer, at attempt 1, held by its claimer.
async fn concurrent_claimers_never_claim_a_run_twice(db: &dyn TestDb) {
    let store = db.open().await;
    for i in 0..60 {
        let id = format!("t{i:02}");
        store
            .insert_run(&new_run(&id, None, i), Some(&task(&id, i)))
            .await
            .unwrap();
    }
    let mut claimers = Vec::new();
    for c in 0..8 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let me = format!("n{c}");
            let mut got = Vec::new();
            while let Some(run) = store.claim_queued_run(&me, 10_000, None).await.unwrap() {
                assert_eq!(
                    (run.status, run.node_id.as_deref(), run.attempt, run.busy),
                    (RunStatus::Running, Some(me.as_str()), 1, true)
                );
                got.push(run.run_id);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for c in claimers {
        let got = c.await.unwrap();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            got, sorted,
            "a claimer took a newer run before an older one"
        );
        claimed.extend(got);
    }
    claimed.sort();
    let all: Vec<String> = (0..60).map(|i| format!("r-t{i:02}")).collect();
    assert_eq!(claimed, all, "every run claimed exactly once");
    assert!(
        store
            .claim_queued_run("late", 1, None)
            .await
            .unwrap()
            .is_none()
    );
    // A claim for one task takes only that task's run.
    store
        .insert_run(&new_run("x", None, 99), Some(&task("x", 99)))
        .await
        .unwrap();
    store
        .insert_run(&new_run("y", None, 98), Some(&task("y", 98)))
        .await
        .unwrap();
    let x = store.claim_queued_run("n0", 1, Some("x")).await.unwrap();
    assert_eq!(x.unwrap().task_id, "x");
    assert_eq!(
        store.active_run("y").await.unwrap().unwrap().status,
        RunStatus::Queued
    );
}

/// A node whose lease ran out is taken over (attempt 2); from then on its
/// writes (events, the task row, the busy flag) are refused and write
/// nothing, while the new holder's are accepted and can finish the run once.
async fn a_holder_that_lost_its_lease_writes_nothing(db: &dyn TestDb) {
    let store = db.open().await;
    store
        .insert_run(&new_run("t", Some(("a", 1_000)), 1), Some(&task("t", 1)))
        .await
        .unwrap();
    let old = store
        .active_run("t")
        .await
        .unwrap()
        .unwrap()
        .fence()
        .unwrap();
    assert_eq!(
        old,
        Fence {
            run_id: "r-t".into(),
            node_id: "a".into(),
            attempt: 1
        }
    );
    assert!(
        store
            .append_fenced(&events("t", 1..=2), None, &old, false)
            .await
            .unwrap()
    );

    let taken = store
        .take_over_runs("b", 2_000, 12_000, None)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let new = taken[0].fence().unwrap();
    assert_eq!((new.node_id.as_str(), new.attempt), ("b", 2));

    let mut failed = task("t", 1);
    failed.status = TaskStatus::Failed;
    assert!(
        !store
            .append_fenced(&events("t", 3..=3), Some(&failed), &old, true)
            .await
            .unwrap()
    );
    assert!(!store.set_run_busy(&old, false).await.unwrap());
    assert_eq!(
        seqs(&store.list_events("t", 0, 10).await.unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        store.get_task("t").await.unwrap().unwrap().status,
        TaskStatus::Created
    );
    // The old holder's heartbeat no longer renews it.
    assert!(
        store
            .renew_leases("a", 2_500, 3_500)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(store.set_run_busy(&new, true).await.unwrap());
    let last = [event("t", 3), end("t", 4)];
    assert!(
        store
            .append_fenced(&last, Some(&failed), &new, true)
            .await
            .unwrap()
    );
    assert_eq!(
        seqs(&store.list_events("t", 0, 10).await.unwrap()),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        store.get_task("t").await.unwrap().unwrap().status,
        TaskStatus::Failed
    );
    assert!(
        store.active_run("t").await.unwrap().is_none(),
        "the run is done"
    );
    // Done: nobody takes it over again, and a second finish writes nothing.
    assert!(
        store
            .take_over_runs("c", i64::MAX, i64::MAX, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store
            .append_fenced(&[end("t", 5)], None, &new, true)
            .await
            .unwrap()
    );
}

async fn leases_are_renewed_by_heartbeat_and_expire_without_it(db: &dyn TestDb) {
    let store = db.open().await;
    for (id, holder) in [("t1", "a"), ("t2", "a"), ("t3", "b")] {
        store
            .insert_run(&new_run(id, Some((holder, 1_000)), 1), Some(&task(id, 1)))
            .await
            .unwrap();
    }
    let renewed = store.renew_leases("a", 900, 1_900).await.unwrap();
    let mut ids: Vec<&str> = renewed.iter().map(|r| r.task_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["t1", "t2"]);
    assert!(renewed.iter().all(|r| r.lease_until == 1_900));
    // At 1,500 only b's lease (1,000) has run out.
    let taken = store.take_over_runs("c", 1_500, 2_500, None).await.unwrap();
    assert_eq!(
        taken.iter().map(|r| r.task_id.as_str()).collect::<Vec<_>>(),
        ["t3"]
    );
    assert!(
        store
            .take_over_runs("c", 1_500, 2_500, None)
            .await
            .unwrap()
            .is_empty()
    );
    // A node that restarts takes over its own runs at once, leases or not.
    let own = store
        .take_over_runs("a", 1_000, 5_000, Some("a"))
        .await
        .unwrap();
    assert_eq!(own.len(), 2);
    assert!(
        own.iter()
            .all(|r| r.attempt == 2 && r.node_id.as_deref() == Some("a"))
    );
}

/// Every surviving node sweeps for expired leases at once: each expired run
/// is taken over by exactly one of them, and only one finish succeeds.
async fn concurrent_sweepers_take_each_expired_run_once(db: &dyn TestDb) {
    let store = db.open().await;
    for i in 0..40 {
        let id = format!("t{i:02}");
        store
            .insert_run(&new_run(&id, Some(("dead", 1_000)), i), Some(&task(&id, i)))
            .await
            .unwrap();
    }
    let mut sweepers = Vec::new();
    for s in 0..6 {
        let store = store.clone();
        sweepers.push(tokio::spawn(async move {
            let me = format!("s{s}");
            let taken = store
                .take_over_runs(&me, 5_000, 15_000, None)
                .await
                .unwrap();
            let mut finished = Vec::new();
            for run in taken {
                assert_eq!(
                    (run.attempt, run.node_id.as_deref()),
                    (2, Some(me.as_str()))
                );
                let fence = run.fence().unwrap();
                if store
                    .append_fenced(&[end(&run.task_id, 1)], None, &fence, true)
                    .await
                    .unwrap()
                {
                    finished.push(run.task_id);
                }
            }
            finished
        }));
    }
    let mut finished = Vec::new();
    for s in sweepers {
        finished.extend(s.await.unwrap());
    }
    finished.sort();
    let all: Vec<String> = (0..40).map(|i| format!("t{i:02}")).collect();
    assert_eq!(finished, all, "each expired run ended exactly once");
    for id in &all {
        assert_eq!(seqs(&store.list_events(id, 0, 10).await.unwrap()), vec![1]);
    }
}

async fn cancel_requests_are_durable_and_reach_the_holder(db: &dyn TestDb) {
    let store = db.open().await;
    for id in ["t1", "t2"] {
        store
            .insert_run(&new_run(id, Some(("a", 1_000)), 1), Some(&task(id, 1)))
            .await
            .unwrap();
    }
    store
        .insert_run(&new_run("q", None, 2), Some(&task("q", 2)))
        .await
        .unwrap();
    assert!(
        store
            .request_cancel(Some("none"), "requested")
            .await
            .unwrap()
            .is_empty()
    );
    let asked = store.request_cancel(Some("t1"), "requested").await.unwrap();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].cancel_reason.as_deref(), Some("requested"));
    // A restart asks every unfinished run; t1 keeps its first reason.
    let all = store.request_cancel(None, "restart").await.unwrap();
    assert_eq!(all.len(), 3);
    let leases = store.renew_leases("a", 500, 1_500).await.unwrap();
    let mut reasons: Vec<(String, Option<String>)> = leases
        .into_iter()
        .map(|r| (r.task_id, r.cancel_reason))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("t1".into(), Some("requested".into())),
            ("t2".into(), Some("restart".into()))
        ]
    );
    // A queued run's request is there for whoever claims it.
    let q = store
        .claim_queued_run("b", 1_000, Some("q"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q.cancel_reason.as_deref(), Some("restart"));
    // Finished runs are not asked again.
    let f = q.fence().unwrap();
    assert!(
        store
            .append_fenced(&[end("q", 1)], None, &f, true)
            .await
            .unwrap()
    );
    assert_eq!(
        store.request_cancel(None, "restart").await.unwrap().len(),
        2
    );
}

/// The cluster-wide 429: a run is queued only while the live nodes have a
/// slot no busy (or queued) run holds; stale nodes and their runs count for
/// nothing, and a session between steps frees its slot.
async fn queueing_counts_the_slots_of_live_nodes(db: &dyn TestDb) {
    let store = db.open().await;
    store.register_node(&node("a", 2, 1_000)).await.unwrap();
    store.register_node(&node("dead", 5, 10)).await.unwrap();
    let live_since = 500;
    store
        .insert_run(
            &new_run("busy", Some(("a", 2_000)), 1),
            Some(&task("busy", 1)),
        )
        .await
        .unwrap();
    store
        .insert_run(
            &new_run("ghost", Some(("dead", 2_000)), 1),
            Some(&task("ghost", 1)),
        )
        .await
        .unwrap();
    assert!(
        store
            .queue_run(&new_run("q1", None, 2), &task("q1", 2), live_since)
            .await
            .unwrap()
    );
    // a's two slots: one busy run, one queued run.
    assert!(
        !store
            .queue_run(&new_run("q2", None, 3), &task("q2", 3), live_since)
            .await
            .unwrap()
    );
    assert!(
        store.get_task("q2").await.unwrap().is_none(),
        "a refused run writes nothing"
    );
    let busy = store
        .active_run("busy")
        .await
        .unwrap()
        .unwrap()
        .fence()
        .unwrap();
    assert!(store.set_run_busy(&busy, false).await.unwrap());
    assert!(
        store
            .queue_run(&new_run("q2", None, 3), &task("q2", 3), live_since)
            .await
            .unwrap()
    );
    assert_eq!(
        store.active_run("q2").await.unwrap().unwrap().status,
        RunStatus::Queued
    );
    assert!(
        !store
            .queue_run(&new_run("q3", None, 4), &task("q3", 4), live_since)
            .await
            .unwrap()
    );

    // Where a first step goes when its node is full: the live node with the
    // most free slots (its busy runs counted), never the asking node itself.
    store.register_node(&node("b", 3, 1_000)).await.unwrap();
    store
        .insert_run(&new_run("b1", Some(("b", 2_000)), 1), Some(&task("b1", 1)))
        .await
        .unwrap();
    store.set_run_busy(&busy, true).await.unwrap();
    // a: 2 slots, 1 busy; b: 3 slots, 1 busy.
    let free = store.node_with_free_slot(live_since, "x").await.unwrap();
    assert_eq!(free.map(|n| n.node_id), Some("b".into()));
    let free = store.node_with_free_slot(live_since, "b").await.unwrap();
    assert_eq!(free.map(|n| n.node_id), Some("a".into()));
    store
        .insert_run(&new_run("a2", Some(("a", 2_000)), 1), Some(&task("a2", 1)))
        .await
        .unwrap();
    let none = store.node_with_free_slot(live_since, "b").await.unwrap();
    assert!(
        none.is_none(),
        "a is full, and a dead node has no free slot"
    );
}

/// PostgreSQL rings the listeners of every node after a commit (SQLite has
/// nobody to ring): events with the task's last seq, queued runs and stop
/// requests.
async fn rings_follow_commits_of_other_connections(db: &dyn TestDb) {
    let store = db.open().await;
    let Some(mut rings) = store.listen().await.unwrap() else {
        return;
    };
    let writer = db.open().await;
    writer.insert_task(&task("t", 1)).await.unwrap();
    writer
        .append_events(&events("t", 1..=3), None)
        .await
        .unwrap();
    writer
        .insert_run(&new_run("q", None, 2), Some(&task("q", 2)))
        .await
        .unwrap();
    writer.request_cancel(Some("q"), "requested").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let ring = tokio::time::timeout(std::time::Duration::from_secs(30), rings.recv())
            .await
            .expect("a ring")
            .expect("the listener is running");
        if ring != Ring::Reconnected {
            got.push(ring);
        }
    }
    assert_eq!(
        got,
        vec![
            Ring::Events {
                task_id: "t".into(),
                first: 1,
                seq: 3
            },
            Ring::RunQueued,
            Ring::Cancel {
                task_id: "q".into(),
                reason: "requested".into()
            },
        ]
    );
}

fn checkpoint(task_id: &str, step: i64, body: &str) -> Checkpoint {
    Checkpoint {
        task_id: task_id.into(),
        n: 0,
        step,
        body: body.into(),
        created_at: 100 + step,
    }
}

/// Checkpoints are appended in order, each in the transaction of its
/// events: a batch that fails (a seq clash, a lost fence) writes neither,
/// so the last checkpoint stored is always a whole one whose events are
/// all there. They survive a reopen and go with their task.
async fn checkpoints_are_appended_with_their_events_or_not_at_all(db: &dyn TestDb) {
    let store = db.open().await;
    store
        .insert_run(&new_run("t", Some(("a", 1_000)), 1), Some(&task("t", 1)))
        .await
        .unwrap();
    let fence = store
        .active_run("t")
        .await
        .unwrap()
        .unwrap()
        .fence()
        .unwrap();
    let first = checkpoint("t", 1, r#"{"messages":["a"]}"#);
    let usage = |n: i64| TaskUsage {
        input_tokens: n,
        output_tokens: n + 1,
        cost_usd: 0.5,
        modified_at: 200 + n,
    };
    let usage_of = |t: Task| (t.input_tokens, t.output_tokens, t.modified_at);
    assert!(
        store
            .append_progress(
                "t",
                &events("t", 1..=2),
                Some(&first),
                Some(&usage(10)),
                Some(&fence)
            )
            .await
            .unwrap()
    );
    assert_eq!(
        usage_of(store.get_task("t").await.unwrap().unwrap()),
        (10, 11, 210)
    );
    // Without events, and unfenced.
    let second = checkpoint("t", 1, r#"{"messages":["b"]}"#);
    assert!(
        store
            .append_progress("t", &[], Some(&second), None, None)
            .await
            .unwrap()
    );
    // seq 2 exists: neither the events nor the checkpoint nor the usage
    // are written.
    let torn = checkpoint("t", 2, "torn");
    assert!(
        store
            .append_progress(
                "t",
                &events("t", 2..=3),
                Some(&torn),
                Some(&usage(20)),
                None
            )
            .await
            .is_err()
    );
    assert_eq!(
        usage_of(store.get_task("t").await.unwrap().unwrap()),
        (10, 11, 210)
    );
    let bodies = |cps: Vec<Checkpoint>| -> Vec<(i64, i64, String)> {
        cps.into_iter().map(|c| (c.n, c.step, c.body)).collect()
    };
    let want = vec![(1, 1, first.body.clone()), (2, 1, second.body.clone())];
    assert_eq!(bodies(store.checkpoints("t").await.unwrap()), want);
    assert_eq!(store.checkpoints("t").await.unwrap()[0].created_at, 101);
    // A holder that lost the run writes nothing either.
    let taken = store
        .take_over_runs("b", 2_000, 12_000, None)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert!(
        !store
            .append_progress(
                "t",
                &events("t", 3..=3),
                Some(&torn),
                Some(&usage(30)),
                Some(&fence)
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .append_progress("t", &[], None, Some(&usage(30)), Some(&fence))
            .await
            .unwrap()
    );
    assert_eq!(seqs(&store.event_log("t").await.unwrap()), [1, 2]);
    assert_eq!(
        usage_of(store.get_task("t").await.unwrap().unwrap()),
        (10, 11, 210)
    );
    // More events than one statement takes, with usage and no checkpoint.
    assert!(
        store
            .append_progress("t", &events("t", 3..=80), None, Some(&usage(40)), None)
            .await
            .unwrap()
    );
    assert_eq!(
        seqs(&store.event_log("t").await.unwrap()),
        (1..=80).collect::<Vec<_>>()
    );
    assert_eq!(
        usage_of(store.get_task("t").await.unwrap().unwrap()),
        (40, 41, 240)
    );
    drop(store);

    let store = db.open().await;
    assert_eq!(bodies(store.checkpoints("t").await.unwrap()), want);
    assert!(store.checkpoints("other").await.unwrap().is_empty());
    assert!(store.delete_task("t").await.unwrap());
    assert!(store.checkpoints("t").await.unwrap().is_empty());
}

async fn stop_requests_are_durable_keep_the_first_reason_and_go_with_the_task(db: &dyn TestDb) {
    let store = db.open().await;
    store.insert_task(&task("t", 1)).await.unwrap();
    store.insert_task(&task("u", 2)).await.unwrap();
    assert_eq!(store.stop_request("t").await.unwrap(), None);
    store
        .request_stop("t", "stopped on request", 10)
        .await
        .unwrap();
    store
        .request_stop("t", "a second reason", 11)
        .await
        .unwrap();
    drop(store);

    let store = db.open().await;
    assert_eq!(
        store.stop_request("t").await.unwrap().as_deref(),
        Some("stopped on request")
    );
    assert_eq!(store.stop_request("u").await.unwrap(), None);
    assert!(store.request_stop("missing", "x", 12).await.is_err());
    assert!(store.delete_task("t").await.unwrap());
    assert_eq!(store.stop_request("t").await.unwrap(), None);
}

/// A node that took a run over without a free slot puts it back in the
/// queue: nobody holds it, another node claims it (next attempt), and the
/// fence that requeued it writes nothing more.
async fn a_held_run_goes_back_to_the_queue_for_another_node(db: &dyn TestDb) {
    let store = db.open().await;
    store
        .insert_run(&new_run("t", Some(("a", 1_000)), 1), Some(&task("t", 1)))
        .await
        .unwrap();
    let held = store
        .active_run("t")
        .await
        .unwrap()
        .unwrap()
        .fence()
        .unwrap();
    assert!(store.requeue_run(&held).await.unwrap());
    let queued = store.active_run("t").await.unwrap().unwrap();
    assert_eq!(
        (queued.status, queued.node_id, queued.busy),
        (RunStatus::Queued, None, false)
    );
    assert!(!store.requeue_run(&held).await.unwrap());
    let claimed = store
        .claim_queued_run("b", 5_000, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (claimed.node_id.as_deref(), claimed.attempt),
        (Some("b"), 2)
    );
    assert!(
        !store
            .append_fenced(&events("t", 1..=1), None, &held, false)
            .await
            .unwrap()
    );
    assert!(
        store
            .append_fenced(&events("t", 1..=1), None, &claimed.fence().unwrap(), false)
            .await
            .unwrap()
    );
}
