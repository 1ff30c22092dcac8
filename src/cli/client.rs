//! The connection to agentd: one lazily connected channel shared by the
//! generated clients of both services, the API key on every call, and the
//! wording of errors.

use std::time::Duration;

use agentd::proto::{
    ap::agent_service_client::AgentServiceClient, trae::trae_service_client::TraeServiceClient,
};
use anyhow::{Context as _, bail};
use tonic::{
    Code, Request, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt as _;

use super::{Connection, exit};

/// Large enough for the status of a task with a long event log.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Adds `Authorization: Bearer <key>` to every call, when a key is given.
#[derive(Clone)]
pub struct ApiKey(Option<AsciiMetadataValue>);

impl ApiKey {
    fn new(key: Option<&str>) -> anyhow::Result<Self> {
        let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
            return Ok(Self(None));
        };
        let mut value: AsciiMetadataValue = format!("Bearer {key}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the API key must be printable ASCII"))?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Transport = InterceptedService<Channel, ApiKey>;

#[derive(Clone)]
pub struct Client {
    pub trae: TraeServiceClient<Transport>,
    pub agent: AgentServiceClient<Transport>,
}

impl Client {
    /// Nothing is dialled until the first call, so every failure to reach
    /// agentd surfaces as that call's `UNAVAILABLE` status.
    pub fn new(conn: &Connection) -> anyhow::Result<Self> {
        let url = server_url(&conn.server)?;
        let channel = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid --server {url:?}"))?
            .connect_timeout(Duration::from_secs(10))
            .connect_lazy();
        let key = ApiKey::new(conn.api_key.as_deref())?;
        Ok(Self {
            trae: TraeServiceClient::with_interceptor(channel.clone(), key.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            agent: AgentServiceClient::with_interceptor(channel, key)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        })
    }
}

/// `host:port` or `http://host:port`. TLS is not built in: agentd serves
/// plain HTTP/2 (put a tunnel or a proxy in front for anything else).
pub fn server_url(server: &str) -> anyhow::Result<String> {
    let server = server.trim().trim_end_matches('/');
    if server.is_empty() {
        bail!("--server is empty");
    }
    let url = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    if url.starts_with("https://") {
        bail!("--server {url}: TLS is not supported by this client; use http://");
    }
    if !url.starts_with("http://") {
        bail!("--server {url}: only http:// addresses are supported");
    }
    Ok(url)
}

/// Whether a failed call is worth repeating (the connection, not the request).
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// The exit code for an error: 5 when agentd could not be reached.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let unreachable = e.chain().any(|c| {
        c.downcast_ref::<Status>()
            .is_some_and(|s| s.code() == Code::Unavailable)
    });
    if unreachable {
        exit::UNAVAILABLE
    } else {
        exit::ERROR
    }
}

/// One line for the user: the context, then the status in words.
pub fn explain(e: &anyhow::Error, server: &str) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        if let Some(status) = cause.downcast_ref::<Status>() {
            parts.push(describe_status(status, server));
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
}

fn describe_status(status: &Status, server: &str) -> String {
    let mut message = status.message().to_string();
    if message.is_empty() {
        message = format!("{:?}", status.code());
    }
    match status.code() {
        Code::Unavailable => {
            // The transport error's causes say what happened (refused, DNS, …).
            let mut causes = Vec::new();
            let mut source = std::error::Error::source(status);
            while let Some(s) = source {
                let text = s.to_string();
                if !message.contains(&text) && !causes.contains(&text) {
                    causes.push(text);
                }
                source = s.source();
            }
            let detail = std::iter::once(message).chain(causes).collect::<Vec<_>>();
            format!("cannot reach agentd at {server}: {}", detail.join(": "))
        }
        Code::Unauthenticated => {
            format!("{message} (pass --api-key KEY or set AGENTD_API_KEY)")
        }
        _ => match status.get_details_error_info() {
            Some(info) if !info.reason.is_empty() => format!("{message} [{}]", info.reason),
            _ => message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(server_url("127.0.0.1:1").unwrap(), "http://127.0.0.1:1");
        assert_eq!(server_url("http://h:2/").unwrap(), "http://h:2");
        assert!(server_url("https://h:3").is_err());
        assert!(server_url("ftp://h").is_err());
        assert!(server_url(" ").is_err());
    }

    #[test]
    fn errors_read_as_one_line_with_the_right_code() {
        let e = anyhow::Error::new(Status::not_found("task x not found")).context("stopping x");
        assert_eq!(explain(&e, "s"), "stopping x: task x not found");
        assert_eq!(exit_code(&e), exit::ERROR);
        let e = anyhow::Error::new(Status::unavailable("tcp connect error"));
        assert_eq!(
            explain(&e, "http://h:1"),
            "cannot reach agentd at http://h:1: tcp connect error"
        );
        assert_eq!(exit_code(&e), exit::UNAVAILABLE);
        let e = anyhow::Error::new(Status::unauthenticated("missing API key"));
        assert!(explain(&e, "s").contains("--api-key"));
    }

    #[test]
    fn api_key_goes_into_the_authorization_header() {
        let mut key = ApiKey::new(Some(" k1 ")).unwrap();
        let req = key.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer k1");
        let mut none = ApiKey::new(None).unwrap();
        assert!(
            none.call(Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );
        assert!(ApiKey::new(Some("bad\nkey")).is_err());
    }
}
