//! Optional API keys. When keys are configured, every call on every transport
//! (gRPC, gRPC-Web, REST through Envoy, WebSockets) needs one, sent as
//! `Authorization: Bearer <key>` or `X-API-Key: <key>`; health checks stay
//! open. Browsers cannot set headers on a WebSocket, so an upgrade may send
//! `?api_key=<key>` instead.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::Response,
};

pub use super::keys::ApiKeys;
use super::reject;
use crate::{error::Error, tasks::Caller};

/// Who is calling, as the middleware found it; a request without (only a
/// health check could be one) is refused rather than given every task.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no caller identity on this request"))
}

/// The same for the routes agentd serves itself (SSE, WebSockets, the
/// Trae status): the refusal in the path's envelope.
pub fn http_caller(
    found: Option<axum::Extension<Caller>>,
    path: &str,
) -> Result<Caller, Box<Response>> {
    match found {
        Some(axum::Extension(caller)) => Ok(caller),
        None => Err(Box::new(super::status::http_error(
            Error::Unauthenticated("no caller identity on this request".into()),
            path,
        ))),
    }
}

/// Paths that never need a key: the two health checks.
pub fn is_health_check(path: &str) -> bool {
    path == "/agentd.trae.v1.TraeService/Health" || path.starts_with("/grpc.health.v1.Health/")
}

fn presented_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let is_upgrade = headers.contains_key(header::UPGRADE);
    let from_query = query
        .filter(|_| is_upgrade)
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api_key=")));
    bearer.or(api_key).or(from_query).map(str::trim)
}

/// Refuses calls without a valid key (when keys are on) and tells the
/// handlers who is calling: a [`Caller`] in the request's extensions.
/// Handlers find none on the health checks, and refuse then (fail closed).
pub async fn require_api_key(
    State(keys): State<ApiKeys>,
    mut req: Request,
    next: Next,
) -> Response {
    if !keys.is_enabled() {
        req.extensions_mut().insert(Caller::Anyone);
        return next.run(req).await;
    }
    if is_health_check(req.uri().path()) {
        return next.run(req).await;
    }
    let caller = presented_key(req.headers(), req.uri().query()).map(|k| keys.identify(k));
    match caller {
        Some(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Some(None) => reject(&req, Error::Unauthenticated("invalid API key".into())),
        None => reject(
            &req,
            Error::Unauthenticated(
                "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>".into(),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sources() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert_eq!(presented_key(&h, None), Some("k1"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(presented_key(&h, None), Some("k2"));
        let mut h = HeaderMap::new();
        assert_eq!(
            presented_key(&h, Some("api_key=k3")),
            None,
            "query keys only for WebSocket upgrades"
        );
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(presented_key(&h, Some("a=1&api_key=k3")), Some("k3"));
    }
}
