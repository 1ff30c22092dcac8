//! The single mapping from the domain [`Error`] to a gRPC [`Status`].
//!
//! gRPC callers get a semantic code plus a `google.rpc.ErrorInfo` detail whose
//! `reason` is the document's error code. For REST, Envoy's Lua filter
//! (`envoy/envelope.lua`) builds each dialect's envelope from three metadata
//! entries sent with the status: `x-error-code`, `x-http-status` (the
//! document's HTTP status, which gRPC codes cannot always express: 409, 413,
//! 502) and `x-error-details` (a JSON object).

use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};
use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::error::{Error, Resource};

/// The error domain in `ErrorInfo`.
const DOMAIN: &str = "agentd";

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        error_status(e)
    }
}

/// What every rendering of an error needs: the gRPC code, the document's
/// error code (`reason`) and HTTP status, the details object, the message
/// callers may see, and how long to wait before retrying.
struct Described {
    code: Code,
    reason: &'static str,
    http: u16,
    details: Value,
    message: String,
    retry_after: Option<Duration>,
}

fn describe(e: Error) -> Described {
    let message = e.to_string();
    let (code, reason, http, details, retry_after) = match &e {
        Error::InvalidRequest(_) => (
            Code::InvalidArgument,
            "INVALID_REQUEST",
            400,
            json!({}),
            None,
        ),
        Error::NotFound { kind, id } => {
            let (reason, key, suggestion) = match kind {
                Resource::Task => (
                    "TASK_NOT_FOUND",
                    "task_id",
                    "check the task id; listing tasks shows which exist",
                ),
                Resource::Step => (
                    "STEP_NOT_FOUND",
                    "step_id",
                    "check the step id; listing the task's steps shows which exist",
                ),
                Resource::Artifact => (
                    "ARTIFACT_NOT_FOUND",
                    "artifact_id",
                    "check the artifact id; listing the task's artifacts shows which exist",
                ),
                Resource::Route => (
                    "ROUTE_NOT_FOUND",
                    "path",
                    "see the README for the API's paths",
                ),
            };
            (
                Code::NotFound,
                reason,
                404,
                json!({ key: id, "suggestion": suggestion }),
                None,
            )
        }
        Error::TaskAlreadyRunning(id) => (
            Code::FailedPrecondition,
            "TASK_ALREADY_RUNNING",
            409,
            json!({ "task_id": id }),
            None,
        ),
        Error::InsufficientResources { retry_after, .. } => (
            Code::ResourceExhausted,
            "INSUFFICIENT_RESOURCES",
            429,
            json!({}),
            *retry_after,
        ),
        Error::Unauthenticated(_) => (
            Code::Unauthenticated,
            "UNAUTHENTICATED",
            401,
            json!({}),
            None,
        ),
        Error::RateLimited { retry_after, .. } => (
            Code::ResourceExhausted,
            "RATE_LIMIT_EXCEEDED",
            429,
            json!({}),
            Some(*retry_after),
        ),
        Error::PayloadTooLarge(_) => (
            Code::ResourceExhausted,
            "PAYLOAD_TOO_LARGE",
            413,
            json!({}),
            None,
        ),
        Error::Provider {
            provider, status, ..
        } => (
            Code::Unavailable,
            "OPENAI_API_ERROR",
            502,
            match status {
                Some(status) => json!({ "provider": provider, "provider_status": status }),
                None => json!({ "provider": provider }),
            },
            None,
        ),
        Error::Unavailable(_) => (
            Code::Unavailable,
            "SERVICE_UNAVAILABLE",
            503,
            json!({}),
            Some(Duration::from_secs(5)),
        ),
        Error::Unimplemented(_) => (Code::Unimplemented, "NOT_IMPLEMENTED", 501, json!({}), None),
        Error::Internal(inner) => {
            tracing::error!(error = ?inner, "internal error");
            let message = "internal error".to_string();
            return Described {
                code: Code::Internal,
                reason: "INTERNAL_ERROR",
                http: 500,
                details: json!({}),
                message,
                retry_after: None,
            };
        }
    };
    Described {
        code,
        reason,
        http,
        details,
        message,
        retry_after,
    }
}

pub fn error_status(e: Error) -> Status {
    let d = describe(e);
    let mut md = MetadataMap::new();
    md.insert("x-error-code", ascii(d.reason));
    md.insert("x-http-status", ascii(&d.http.to_string()));
    md.insert("x-error-details", ascii(&ascii_json(&d.details)));
    if let Some(after) = d.retry_after {
        md.insert("retry-after", ascii(&retry_after_secs(after).to_string()));
    }
    let info: HashMap<String, String> = d
        .details
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Status::with_error_details_and_metadata(
        d.code,
        d.message,
        ErrorDetails::with_error_info(d.reason, DOMAIN, info),
        md,
    )
}

/// An error for a request that is not gRPC (WebSocket upgrades, unknown
/// routes, refusals by the auth and rate-limit layers): the same code and
/// status as the gRPC path, in the envelope of the path's dialect.
pub fn http_error(e: Error, path: &str) -> axum::response::Response {
    use axum::{http::StatusCode, response::IntoResponse as _};
    let d = describe(e);
    let status = StatusCode::from_u16(d.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if path.starts_with("/api/") {
        json!({"status": "error", "error": d.message})
    } else {
        json!({
            "success": false,
            "message": d.message,
            "error": {"code": d.reason, "message": d.message, "details": d.details},
        })
    };
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(after) = d.retry_after {
        resp.headers_mut()
            .insert("retry-after", retry_after_secs(after).into());
    }
    resp
}

/// Whole seconds, at least one (`Retry-After: 0` would invite a busy loop).
fn retry_after_secs(after: Duration) -> u64 {
    after.as_secs().max(1)
}

fn ascii(s: &str) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    // Callers pass printable ASCII only (codes, numbers, ascii_json output).
    s.parse()
        .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(""))
}

/// JSON text with every non-ASCII character escaped (`\uXXXX`), so it can
/// travel as a metadata value and still decode to the same JSON.
pub fn ascii_json(v: &Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_ascii() && !ch.is_ascii_control() {
            out.push(ch);
        } else {
            let mut buf = [0u16; 2];
            for unit in ch.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_carries_code_status_and_details() {
        let st = error_status(Error::not_found(Resource::Task, "tâsk-1"));
        assert_eq!(st.code(), Code::NotFound);
        let md = st.metadata();
        assert_eq!(md.get("x-error-code").unwrap(), "TASK_NOT_FOUND");
        assert_eq!(md.get("x-http-status").unwrap(), "404");
        let details: Value =
            serde_json::from_str(md.get("x-error-details").unwrap().to_str().unwrap()).unwrap();
        assert_eq!(details["task_id"], "tâsk-1");
        assert_eq!(
            st.get_details_error_info().unwrap().reason,
            "TASK_NOT_FOUND"
        );
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let st = error_status(Error::Internal(anyhow::anyhow!("disk /secret/path failed")));
        assert_eq!(st.code(), Code::Internal);
        assert_eq!(st.message(), "internal error");
    }
}
