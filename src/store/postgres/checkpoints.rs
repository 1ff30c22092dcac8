//! [`CheckpointStore`] on PostgreSQL: the checkpoint row and the task's usage
//! join their events in one transaction, fenced by the run row's lock like
//! `append_fenced`.

use std::sync::Arc;

use async_trait::async_trait;

use super::{PgStore, append_in, pg_text, runs::fence_holds};
use crate::{
    error::Result,
    store::{Checkpoint, CheckpointStore, Event, Fence, TaskUsage},
};

#[async_trait]
impl CheckpointStore for PgStore {
    async fn append_progress(
        &self,
        task_id: &str,
        events: &[Arc<Event>],
        checkpoint: Option<&Checkpoint>,
        usage: Option<&TaskUsage>,
        fence: Option<&Fence>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if let Some(f) = fence
            && !fence_holds(&mut tx, f).await?
        {
            return Ok(false);
        }
        append_in(&mut tx, events, None).await?;
        if let Some(cp) = checkpoint {
            // The task row's lock (taken by the events' seq counter, or here)
            // orders two writers of one task's checkpoints.
            sqlx::query("SELECT 1 FROM tasks WHERE task_id = $1 FOR UPDATE")
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO checkpoints (task_id, n, step, body, created_at) \
                 SELECT $1, COALESCE(MAX(n), 0) + 1, $2, $3, $4 FROM checkpoints WHERE task_id = $1",
            )
            .bind(task_id)
            .bind(cp.step)
            .bind(pg_text(&cp.body))
            .bind(cp.created_at)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(u) = usage {
            sqlx::query(
                "UPDATE tasks SET input_tokens = $1, output_tokens = $2, cost_usd = $3, \
                 modified_at = $4 WHERE task_id = $5",
            )
            .bind(u.input_tokens)
            .bind(u.output_tokens)
            .bind(u.cost_usd)
            .bind(u.modified_at)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.after_append(events).await;
        Ok(true)
    }

    async fn checkpoints(&self, task_id: &str) -> Result<Vec<Checkpoint>> {
        let rows: Vec<(String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT task_id, n, step, body, created_at FROM checkpoints WHERE task_id = $1 \
             ORDER BY n",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(task_id, n, step, body, created_at)| Checkpoint {
                task_id,
                n,
                step,
                body,
                created_at,
            })
            .collect())
    }

    async fn request_stop(&self, task_id: &str, reason: &str, at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO stop_requests (task_id, reason, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (task_id) DO NOTHING",
        )
        .bind(task_id)
        .bind(pg_text(reason))
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn stop_request(&self, task_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT reason FROM stop_requests WHERE task_id = $1")
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
