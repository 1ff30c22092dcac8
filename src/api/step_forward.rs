//! An Agent Protocol step asked of this node for a task whose agent session
//! lives on another node: the step is sent on to that node over gRPC (its
//! registered address) and its answer, or its error status with the envelope
//! metadata, is this node's answer. A forwarded step is never forwarded again.

use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::proto::ap::{self, agent_service_client::AgentServiceClient};

/// Marks a step another node forwarded (carries that node's id).
pub const FORWARDED_BY: &str = "x-agentd-forwarded-by";
/// Credentials the owner node checks again.
const PASSED_ON: [&str; 2] = ["authorization", "x-api-key"];

pub fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_BY)
}

pub async fn execute_step(
    from_node: &str,
    owner_address: &str,
    req: Request<ap::ExecuteStepRequest>,
) -> Result<Response<ap::Step>, Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{owner_address}"))
        .map_err(|e| Status::internal(format!("bad node address {owner_address}: {e}")))?
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!(
            "the node holding this task's agent session ({owner_address}) is unreachable: {e}"
        ))
    })?;
    let mut forwarded = Request::new(req.get_ref().clone());
    for key in PASSED_ON {
        if let Some(v) = req.metadata().get(key) {
            forwarded.metadata_mut().insert(key, v.clone());
        }
    }
    if let Ok(node) = MetadataValue::try_from(from_node) {
        forwarded.metadata_mut().insert(FORWARDED_BY, node);
    }
    AgentServiceClient::new(channel)
        .execute_step(forwarded)
        .await
}
