//! The Trae Agent facade (`agentd.trae.v1.TraeService`, REST under /api).
//! Each handler: unpack the request, call the task layer, map the result.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth::caller,
    convert::{ApiStream, follow_events, sandbox, to_struct},
    paging::{self, Window},
    trae_status::TraeStatus,
};
use crate::tasks::{
    Budget, CgroupLimits, ConfigQuery, OnInterrupt, RunRequest, TaskManager, ToolInfo, parse_bytes,
};
use crate::{
    clock,
    error::Error,
    proto::{
        TaskEvent,
        trae::{self, trae_service_server::TraeService},
    },
    tasks::Task,
};

pub(super) const SUCCESS: &str = "success";

pub struct TraeApi {
    tasks: Arc<TaskManager>,
}

impl TraeApi {
    pub fn new(tasks: Arc<TaskManager>) -> Self {
        Self { tasks }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl TraeService for TraeApi {
    async fn health(
        &self,
        _req: Request<trae::HealthRequest>,
    ) -> Result<Response<trae::HealthResponse>, Status> {
        Ok(Response::new(trae::HealthResponse {
            status: "healthy".into(),
            message: "Trae Agent API is running".into(),
        }))
    }

    async fn run(
        &self,
        req: Request<trae::RunRequest>,
    ) -> Result<Response<trae::RunResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let max_steps = match r.max_steps {
            Some(n) if n < 1 => {
                return Err(
                    Error::invalid(format!("max_steps must be at least 1, got {n}")).into(),
                );
            }
            n => n.map(|n| n as u32),
        };
        let memory_max = match r.task_memory_max.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => {
                parse_bytes(text).map_err(|e| Error::invalid(format!("task_memory_max: {e}")))?
            }
        };
        let on_interrupt = match r.on_interrupt.as_str() {
            "" => None,
            p => Some(OnInterrupt::parse(p).map_err(Error::invalid)?),
        };
        let task_id = self
            .tasks
            .run_trae(
                &caller,
                RunRequest {
                    task: r.task,
                    working_dir: r.working_dir,
                    provider: non_empty(r.provider),
                    model: non_empty(r.model),
                    max_steps,
                    must_patch: r.must_patch,
                    agent_type: r.agent_type,
                    config_file: non_empty(r.config_file),
                    trajectory_file: non_empty(r.trajectory_file),
                    patch_path: non_empty(r.patch_path),
                    on_interrupt,
                    budget: Budget {
                        max_tokens_total: r.max_tokens_total,
                        max_cost_usd: r.max_cost_usd,
                        max_wall_secs: r.max_wall_secs,
                    },
                    limits: CgroupLimits {
                        memory_max,
                        pids_max: r.task_pids_max,
                        cpu_max: r.task_cpu_max,
                    },
                },
            )
            .await?;
        Ok(Response::new(trae::RunResponse {
            status: SUCCESS.into(),
            message: "Task started successfully".into(),
            task_id,
        }))
    }

    async fn get_config(
        &self,
        req: Request<trae::GetConfigRequest>,
    ) -> Result<Response<trae::GetConfigResponse>, Status> {
        let req = req.into_inner();
        let cfg = self.tasks.config_report(ConfigQuery {
            config_file: non_empty(req.config_file),
            provider: non_empty(req.provider),
            model: non_empty(req.model),
        })?;
        Ok(Response::new(trae::GetConfigResponse {
            status: SUCCESS.into(),
            config: Some(trae::ConfigReport {
                config_file: cfg.config_file,
                config_exists: cfg.config_exists,
                general_settings: Some(trae::GeneralSettings {
                    default_provider: cfg.default_provider,
                    max_steps: i32::try_from(cfg.max_steps).unwrap_or(i32::MAX),
                }),
                provider_settings: Some(trae::ProviderSettings {
                    provider: cfg.provider,
                    model: cfg.model,
                    base_url: cfg.base_url.unwrap_or_default(),
                    api_version: cfg.api_version.unwrap_or_default(),
                    api_key_set: cfg.api_key_set,
                    max_tokens: i32::try_from(cfg.max_tokens).unwrap_or(i32::MAX),
                    temperature: cfg.temperature,
                    top_p: cfg.top_p,
                }),
                sandbox: Some(sandbox(
                    self.tasks.sandbox_status(),
                    self.tasks.cgroup_status(),
                )),
            }),
        }))
    }

    async fn list_tools(
        &self,
        req: Request<trae::ListToolsRequest>,
    ) -> Result<Response<trae::ListToolsResponse>, Status> {
        let req = req.into_inner();
        let tool = |t: ToolInfo, mcp_server: Option<String>| trae::Tool {
            name: t.name,
            description: t.description,
            parameters: t.parameters.as_object().map(to_struct),
            mcp_server,
        };
        let mut tools: Vec<trae::Tool> = self
            .tasks
            .tools()
            .into_iter()
            .map(|t| tool(t, None))
            .collect();
        if req.include_mcp {
            let listed = self.tasks.mcp_tools(non_empty(req.config_file)).await?;
            tools.extend(
                listed
                    .into_iter()
                    .map(|(server, spec)| tool(spec, Some(server))),
            );
        }
        Ok(Response::new(trae::ListToolsResponse {
            status: SUCCESS.into(),
            total_tools: tools.len() as i32,
            tools,
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<trae::ListTasksRequest>,
    ) -> Result<Response<trae::ListTasksResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let status = paging::status_filter(&req.status, paging::TRAE_STATUS_HINT)?;
        let window = Window::resolve(req.limit, req.offset)?;
        let (tasks, total) = self
            .tasks
            .list_recent_tasks(&caller, status, window.limit, window.offset)
            .await?;
        let now = clock::now_ms();
        Ok(Response::new(trae::ListTasksResponse {
            status: SUCCESS.into(),
            active_tasks: tasks.iter().map(|t| summary(t, now)).collect(),
            total_tasks: i32::try_from(total).unwrap_or(i32::MAX),
        }))
    }

    type StreamTaskStream = ApiStream<TaskEvent>;

    async fn stream_task(
        &self,
        req: Request<trae::StreamTaskRequest>,
    ) -> Result<Response<Self::StreamTaskStream>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let events = follow_events(&self.tasks, &caller, req.task_id, req.after_seq).await?;
        Ok(Response::new(events))
    }

    async fn get_task_status(
        &self,
        req: Request<trae::GetTaskStatusRequest>,
    ) -> Result<Response<trae::GetTaskStatusResponse>, Status> {
        let caller = caller(&req)?;
        let status = TraeStatus::read(&self.tasks, &caller, &req.into_inner().task_id).await?;
        Ok(Response::new(status.to_proto()))
    }

    async fn stop_task(
        &self,
        req: Request<trae::StopTaskRequest>,
    ) -> Result<Response<trae::StopTaskResponse>, Status> {
        let caller = caller(&req)?;
        let message = self
            .tasks
            .stop_task(&caller, &req.into_inner().task_id)
            .await?;
        Ok(Response::new(trae::StopTaskResponse {
            status: SUCCESS.into(),
            message,
        }))
    }
}

/// Start time (or creation time, before a run) and how long it ran so far.
pub(super) fn summary(t: &Task, now: i64) -> trae::TaskSummary {
    let start = t.started_at.unwrap_or(t.created_at);
    let end = if t.status.is_finished() {
        t.finished_at.unwrap_or(t.modified_at)
    } else {
        now
    };
    let duration = if t.started_at.is_some() {
        (end - start).max(0)
    } else {
        0
    };
    trae::TaskSummary {
        task_id: t.task_id.clone(),
        status: t.status.as_str().into(),
        start_time: clock::epoch_secs(start),
        duration: clock::epoch_secs(duration),
    }
}
