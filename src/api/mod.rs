//! The API layer: one thin tonic service per dialect over the task layer.
//! Handlers validate, call one task-layer function, and map results and
//! errors (`status`) to wire types. Envoy turns these into REST.

pub mod agent;
pub mod auth;
pub mod console;
mod console_upload;
mod convert;
mod event_json;
mod keys;
pub mod observe;
mod paging;
pub mod rate_limit;
pub mod sse;
pub mod status;
mod step_forward;
pub mod trae;
pub mod trae_status;
mod upload;
pub mod websocket;

pub use agent::AgentApi;
pub use console::ConsoleApi;
pub use trae::TraeApi;

/// Refuses a request before it reaches a service: gRPC and gRPC-Web callers
/// get a gRPC status (which Envoy turns into the REST envelope), anything
/// else an HTTP error in the envelope of its path.
pub fn reject(req: &axum::extract::Request, e: crate::error::Error) -> axum::response::Response {
    let content_type = req.headers().get(axum::http::header::CONTENT_TYPE).cloned();
    match content_type {
        // gRPC or gRPC-Web: a trailers-only response in the caller's own content type.
        Some(ct) if ct.as_bytes().starts_with(b"application/grpc") => {
            let mut resp = status::error_status(e).into_http::<axum::body::Body>();
            resp.headers_mut()
                .insert(axum::http::header::CONTENT_TYPE, ct);
            resp
        }
        _ => status::http_error(e, req.uri().path()),
    }
}
