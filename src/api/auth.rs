//! Optional API keys. When keys are configured, every call on every transport
//! (gRPC, gRPC-Web, REST through Envoy, WebSockets) needs one, sent as
//! `Authorization: Bearer <key>` or `X-API-Key: <key>`; health checks stay
//! open. Browsers cannot set headers on a WebSocket, so an upgrade may send
//! `?api_key=<key>` instead.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::Response,
};

use super::reject;
use crate::error::Error;

#[derive(Clone, Default)]
pub struct ApiKeys(Arc<Vec<String>>);

/// Never prints a key.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.0.len())
    }
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let keys: Vec<String> = keys
            .into_iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        Self(Arc::new(keys))
    }

    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    fn accepts(&self, presented: &str) -> bool {
        // Compare with every key, in constant time per key, so timing tells
        // nothing about which key (or how much of one) matched.
        self.0.iter().fold(false, |ok, key| {
            ok | constant_time_eq(key.as_bytes(), presented.as_bytes())
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

pub async fn require_api_key(State(keys): State<ApiKeys>, req: Request, next: Next) -> Response {
    if !keys.is_enabled() || is_health_check(req.uri().path()) {
        return next.run(req).await;
    }
    match presented_key(req.headers(), req.uri().query()) {
        Some(key) if keys.accepts(key) => next.run(req).await,
        Some(_) => reject(&req, Error::Unauthenticated("invalid API key".into())),
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
    fn keys_are_matched_exactly() {
        let keys = ApiKeys::new(["alpha".to_string(), " beta ".to_string(), String::new()]);
        assert!(keys.is_enabled());
        assert!(keys.accepts("alpha") && keys.accepts("beta"));
        assert!(!keys.accepts("alph") && !keys.accepts("alphaa") && !keys.accepts(""));
        assert!(!ApiKeys::new([]).is_enabled());
    }

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
