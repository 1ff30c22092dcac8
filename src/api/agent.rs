//! The Agent Protocol facade (`agentd.agent.v1.AgentService`, REST under
//! /ap/v1/agent). Each handler: unpack the request, call the task layer, map
//! the result. Shapes follow the AutoGPT document and the official spec.

use std::sync::Arc;

use futures_util::StreamExt as _;
use tokio_util::io::ReaderStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    auth::caller,
    convert::{ApiStream, budget, follow_events, from_struct, sandbox, to_struct},
    paging::{self, Page},
    step_forward, upload,
};
use crate::{
    clock, host,
    proto::{
        TaskEvent,
        ap::{self, agent_service_server::AgentService},
        google::api::HttpBody,
    },
    tasks::{Artifact, TaskQuery, TaskStatus},
    tasks::{StepRoute, StepView, TaskManager, TaskView},
};

/// Download chunk size: large enough for throughput, small enough that
/// memory stays flat whatever the file size.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

pub struct AgentApi {
    tasks: Arc<TaskManager>,
}

impl AgentApi {
    pub fn new(tasks: Arc<TaskManager>) -> Self {
        Self { tasks }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn create_task(
        &self,
        req: Request<ap::CreateTaskRequest>,
    ) -> Result<Response<ap::Task>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let view = self
            .tasks
            .create_task(
                &caller,
                req.input,
                from_struct(req.additional_input, "additional_input")?,
            )
            .await?;
        Ok(Response::new(task(&view)))
    }

    async fn list_tasks(
        &self,
        req: Request<ap::ListTasksRequest>,
    ) -> Result<Response<ap::ListTasksResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let page = Page::resolve(req.page, req.size, req.current_page, req.page_size)?;
        let query = TaskQuery {
            status: paging::status_filter(&req.status, paging::AP_STATUS_HINT)?,
            created_after: paging::created_after(&req.created_after)?,
            offset: page.offset(),
            limit: page.limit(),
        };
        let (views, total) = self.tasks.list_tasks(&caller, &query).await?;
        Ok(Response::new(ap::ListTasksResponse {
            tasks: views.iter().map(task).collect(),
            pagination: Some(page.pagination(total)),
        }))
    }

    async fn get_task(
        &self,
        req: Request<ap::GetTaskRequest>,
    ) -> Result<Response<ap::Task>, Status> {
        let caller = caller(&req)?;
        let view = self
            .tasks
            .get_task(&caller, &req.into_inner().task_id)
            .await?;
        Ok(Response::new(task(&view)))
    }

    async fn delete_task(
        &self,
        req: Request<ap::DeleteTaskRequest>,
    ) -> Result<Response<ap::DeleteTaskResponse>, Status> {
        let caller = caller(&req)?;
        self.tasks
            .delete_task(&caller, &req.into_inner().task_id)
            .await?;
        Ok(Response::new(ap::DeleteTaskResponse {
            success: true,
            message: "Task deleted successfully".into(),
        }))
    }

    async fn execute_step(
        &self,
        req: Request<ap::ExecuteStepRequest>,
    ) -> Result<Response<ap::Step>, Status> {
        let caller = caller(&req)?;
        // In a cluster the step runs where the task's agent session lives.
        if !step_forward::is_forwarded(&req)
            && let StepRoute::Node { address, .. } = self
                .tasks
                .step_route(&caller, &req.get_ref().task_id)
                .await?
        {
            return step_forward::execute_step(self.tasks.node_name(), &address, req).await;
        }
        let req = req.into_inner();
        let view = self
            .tasks
            .execute_step(
                &caller,
                &req.task_id,
                req.input,
                from_struct(req.additional_input, "additional_input")?,
            )
            .await?;
        Ok(Response::new(step(&view)))
    }

    async fn list_steps(
        &self,
        req: Request<ap::ListStepsRequest>,
    ) -> Result<Response<ap::ListStepsResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let page = Page::resolve(req.page, req.size, req.current_page, req.page_size)?;
        let (steps, total) = self
            .tasks
            .list_steps(&caller, &req.task_id, page.offset(), page.limit())
            .await?;
        Ok(Response::new(ap::ListStepsResponse {
            steps: steps.iter().map(step).collect(),
            pagination: Some(page.pagination(total)),
        }))
    }

    async fn get_step(
        &self,
        req: Request<ap::GetStepRequest>,
    ) -> Result<Response<ap::Step>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        Ok(Response::new(step(
            &self
                .tasks
                .get_step(&caller, &req.task_id, &req.step_id)
                .await?,
        )))
    }

    async fn upload_artifact(
        &self,
        req: Request<Streaming<ap::UploadArtifactRequest>>,
    ) -> Result<Response<ap::Artifact>, Status> {
        let caller = caller(&req)?;
        let stored = upload::receive(&self.tasks, &caller, req.into_inner()).await?;
        Ok(Response::new(artifact(&stored)))
    }

    async fn list_artifacts(
        &self,
        req: Request<ap::ListArtifactsRequest>,
    ) -> Result<Response<ap::ListArtifactsResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let page = Page::resolve(req.page, req.size, req.current_page, req.page_size)?;
        let (artifacts, total) = self
            .tasks
            .list_artifacts(&caller, &req.task_id, page.offset(), page.limit())
            .await?;
        Ok(Response::new(ap::ListArtifactsResponse {
            artifacts: artifacts.iter().map(artifact).collect(),
            pagination: Some(page.pagination(total)),
        }))
    }

    type DownloadArtifactStream = ApiStream<HttpBody>;

    async fn download_artifact(
        &self,
        req: Request<ap::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let (meta, file) = self
            .tasks
            .open_artifact(&caller, &req.task_id, &req.artifact_id)
            .await?;
        let chunks = ReaderStream::with_capacity(file, DOWNLOAD_CHUNK).map(|chunk| {
            chunk
                .map(body)
                .map_err(|e| Status::internal(format!("reading artifact: {e}")))
        });
        // An empty file still needs one message to carry the content type.
        let stream: Self::DownloadArtifactStream = if meta.file_size == 0 {
            Box::pin(futures_util::stream::once(async {
                Ok(body(Default::default()))
            }))
        } else {
            Box::pin(chunks)
        };
        let mut resp = Response::new(stream);
        if let Ok(v) = content_disposition(&meta.file_name).parse() {
            resp.metadata_mut().insert("content-disposition", v);
        }
        Ok(resp)
    }

    async fn delete_artifact(
        &self,
        req: Request<ap::DeleteArtifactRequest>,
    ) -> Result<Response<ap::DeleteArtifactResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        self.tasks
            .delete_artifact(&caller, &req.task_id, &req.artifact_id)
            .await?;
        Ok(Response::new(ap::DeleteArtifactResponse {
            success: true,
            message: "Artifact deleted successfully".into(),
        }))
    }

    async fn get_agent_status(
        &self,
        req: Request<ap::GetAgentStatusRequest>,
    ) -> Result<Response<ap::GetAgentStatusResponse>, Status> {
        let st = self.tasks.runtime_status(&caller(&req)?).await?;
        let count = |s: TaskStatus| {
            let n = st
                .totals
                .by_status
                .iter()
                .find(|(k, _)| *k == s)
                .map_or(0, |(_, n)| *n);
            i32::try_from(n).unwrap_or(i32::MAX)
        };
        let total: i64 = st.totals.by_status.iter().map(|(_, n)| n).sum();
        let machine_used = st
            .machine_total_bytes
            .saturating_sub(st.machine_available_bytes);
        Ok(Response::new(ap::GetAgentStatusResponse {
            agent_id: "agent-main".into(),
            status: "running".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: [
                "code_execution",
                "file_operations",
                "shell_commands",
                "patch_generation",
            ]
            .map(String::from)
            .to_vec(),
            active_tasks: count(TaskStatus::Running),
            total_tasks: i32::try_from(total).unwrap_or(i32::MAX),
            uptime: clock::iso(st.started_at),
            memory_usage: Some(ap::MemoryUsage {
                used: host::human_bytes(st.process_rss_bytes),
                total: host::human_bytes(st.machine_total_bytes),
                process_rss_bytes: st.process_rss_bytes as f64,
                machine_used_bytes: machine_used as f64,
                machine_total_bytes: st.machine_total_bytes as f64,
            }),
            default_budget: budget(&self.tasks.default_budget(), None),
            api_usage: Some(ap::ApiUsage {
                openai_tokens_used: (st.totals.input_tokens + st.totals.output_tokens) as f64,
                openai_cost: st.totals.cost_usd,
                input_tokens: st.totals.input_tokens as f64,
                output_tokens: st.totals.output_tokens as f64,
            }),
            uptime_seconds: st.uptime_secs,
            task_counts: Some(ap::TaskCounts {
                created: count(TaskStatus::Created),
                running: count(TaskStatus::Running),
                completed: count(TaskStatus::Completed),
                failed: count(TaskStatus::Failed),
                stopped: count(TaskStatus::Stopped),
            }),
            sandbox: Some(sandbox(
                self.tasks.sandbox_status(),
                self.tasks.cgroup_status(),
            )),
        }))
    }

    async fn restart_agent(
        &self,
        req: Request<ap::RestartAgentRequest>,
    ) -> Result<Response<ap::RestartAgentResponse>, Status> {
        let ended = self.tasks.restart(&caller(&req)?).await?;
        Ok(Response::new(ap::RestartAgentResponse {
            success: true,
            message: format!("Agent runtime restarted; {ended} running task(s) were ended"),
            estimated_downtime: "0s".into(),
        }))
    }

    type StreamTaskEventsStream = ApiStream<TaskEvent>;

    async fn stream_task_events(
        &self,
        req: Request<ap::StreamTaskEventsRequest>,
    ) -> Result<Response<Self::StreamTaskEventsStream>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let events = follow_events(&self.tasks, &caller, req.task_id, req.after_seq).await?;
        Ok(Response::new(events))
    }
}

fn task(v: &TaskView) -> ap::Task {
    let t = &v.task;
    ap::Task {
        task_id: t.task_id.clone(),
        input: t.input.clone(),
        additional_input: Some(to_struct(&t.additional_input)),
        status: t.status.as_str().into(),
        created_at: clock::iso(t.created_at),
        modified_at: clock::iso(t.modified_at),
        artifacts: v.artifacts.iter().map(artifact).collect(),
    }
}

fn step(v: &StepView) -> ap::Step {
    let s = &v.step;
    ap::Step {
        step_id: s.step_id.clone(),
        task_id: s.task_id.clone(),
        name: s.name.clone(),
        status: s.status.clone(),
        input: s.input.clone(),
        additional_input: Some(to_struct(&s.additional_input)),
        output: s.output.clone(),
        additional_output: Some(to_struct(&s.additional_output)),
        artifacts: v.artifacts.iter().map(artifact).collect(),
        is_last: s.is_last,
        created_at: clock::iso(s.created_at),
        state: s.state.clone(),
    }
}

pub(super) fn artifact(a: &Artifact) -> ap::Artifact {
    ap::Artifact {
        artifact_id: a.artifact_id.clone(),
        file_name: a.file_name.clone(),
        relative_path: a.relative_path.clone(),
        file_size: u32::try_from(a.file_size).unwrap_or(u32::MAX),
        created_at: clock::iso(a.created_at),
        agent_created: a.agent_created,
    }
}

fn body(data: bytes::Bytes) -> HttpBody {
    HttpBody {
        content_type: "application/octet-stream".into(),
        data: data.into(),
        extensions: Vec::new(),
    }
}

/// `attachment; filename="…"` with an ASCII fallback, plus RFC 5987
/// `filename*` when the name is not plain ASCII.
fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if fallback == name {
        format!("attachment; filename=\"{name}\"")
    } else {
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_disposition_is_ascii_with_utf8_fallback() {
        assert_eq!(
            super::content_disposition("a b.csv"),
            "attachment; filename=\"a b.csv\""
        );
        assert_eq!(
            super::content_disposition("报告.pdf"),
            "attachment; filename=\"__.pdf\"; filename*=UTF-8''%E6%8A%A5%E5%91%8A.pdf"
        );
    }
}
