//! [`CheckpointStore`] on SQLite: the checkpoint row joins its events in
//! the writer's transaction.

use std::sync::Arc;

use async_trait::async_trait;

use super::{SqliteStore, append_events_in, runs::fence_holds};
use crate::{
    error::Result,
    store::{Checkpoint, CheckpointStore, Event, Fence, decode::json_text},
};

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn append_checkpointed(
        &self,
        events: &[Arc<Event>],
        checkpoint: &Checkpoint,
        fence: Option<&Fence>,
    ) -> Result<bool> {
        let batch: Vec<(Arc<Event>, String)> = events
            .iter()
            .map(|e| (e.clone(), json_text(&e.body)))
            .collect();
        let (cp, fence) = (checkpoint.clone(), fence.cloned());
        self.write_tasks(&[&checkpoint.task_id], move |conn| {
            Box::pin(async move {
                if let Some(f) = &fence
                    && !fence_holds(conn, f).await?
                {
                    return Ok(false);
                }
                append_events_in(conn, &batch, None).await?;
                sqlx::query(
                    "INSERT INTO checkpoints (task_id, n, step, body, created_at) \
                     SELECT ?1, COALESCE(MAX(n), 0) + 1, ?2, ?3, ?4 FROM checkpoints \
                     WHERE task_id = ?1",
                )
                .bind(&cp.task_id)
                .bind(cp.step)
                .bind(&cp.body)
                .bind(cp.created_at)
                .execute(conn)
                .await?;
                Ok(true)
            })
        })
        .await
    }

    async fn checkpoints(&self, task_id: &str) -> Result<Vec<Checkpoint>> {
        let rows: Vec<(String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT task_id, n, step, body, created_at FROM checkpoints WHERE task_id = ? \
             ORDER BY n",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(checkpoint_of).collect())
    }

    async fn request_stop(&self, task_id: &str, reason: &str, at: i64) -> Result<()> {
        let (id, reason) = (task_id.to_string(), reason.to_string());
        self.write_tasks_statement(&[task_id], move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO stop_requests (task_id, reason, created_at) VALUES (?, ?, ?) \
                     ON CONFLICT (task_id) DO NOTHING",
                )
                .bind(&id)
                .bind(&reason)
                .bind(at)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn stop_request(&self, task_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT reason FROM stop_requests WHERE task_id = ?")
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

fn checkpoint_of(
    (task_id, n, step, body, created_at): (String, i64, i64, String, i64),
) -> Checkpoint {
    Checkpoint {
        task_id,
        n,
        step,
        body,
        created_at,
    }
}
