//! The RPC layer: one span and one metrics observation per request, gRPC
//! (native, gRPC-Web, and what Envoy transcodes from REST) and plain HTTP
//! routes alike. The span continues the caller's W3C `traceparent`; both end
//! when the response body (a whole server stream) ends or is dropped.

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Instant,
};

use axum::{extract::MatchedPath, http::HeaderMap};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::{Instrument as _, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::metrics::{Metrics, RpcCode, RpcLabels};

/// Requests matching no route (their paths are not labels: unbounded).
const UNMATCHED: &str = "unmatched";

/// Adds [`Observe`] to every route of a router.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    methods: Arc<Methods>,
}

impl ObserveLayer {
    /// `grpc_methods`: the full paths of every gRPC method served
    /// (`/package.Service/Method`); other gRPC paths count as unmatched.
    pub fn new(metrics: Arc<Metrics>, grpc_methods: impl IntoIterator<Item = String>) -> Self {
        let grpc = grpc_methods
            .into_iter()
            .map(|m| &*Box::leak(m.into_boxed_str()))
            .collect();
        Self {
            metrics,
            methods: Arc::new(Methods {
                grpc,
                routes: RwLock::new(HashMap::new()),
            }),
        }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

/// Label values, each a `&'static str` so that observing allocates nothing.
struct Methods {
    grpc: HashSet<&'static str>,
    /// Route templates (`/ap/v1/agent/tasks/{task_id}/ws`), interned on first
    /// use; as many as the router has routes.
    routes: RwLock<HashMap<Box<str>, &'static str>>,
}

impl Methods {
    fn route(&self, template: &str) -> &'static str {
        if let Some(m) = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(template)
        {
            return m;
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(template.into())
            .or_insert_with(|| Box::leak(template.to_string().into_boxed_str()))
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S, B> tower::Service<http::Request<axum::body::Body>> for Observe<S>
where
    S: tower::Service<http::Request<axum::body::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body,
{
    type Response = http::Response<ObservedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let started = Instant::now();
        let grpc = is_grpc(req.headers());
        let path = req.uri().path();
        let methods = &self.layer.methods;
        let method = match methods.grpc.get(path) {
            Some(m) if grpc => *m,
            _ => match req.extensions().get::<MatchedPath>() {
                Some(route) if !grpc => methods.route(route.as_str()),
                _ => UNMATCHED,
            },
        };
        let span = if grpc {
            let (service, rpc) = method
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or(("", ""));
            tracing::info_span!(
                "rpc",
                otel.name = method.trim_start_matches('/'),
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = rpc,
                rpc.grpc.status_code = Empty,
            )
        } else {
            tracing::info_span!(
                "http",
                otel.name = format_args!("{} {method}", req.method()),
                otel.kind = "server",
                otel.status_code = Empty,
                http.request.method = %req.method(),
                http.route = method,
                http.response.status_code = Empty,
            )
        };
        continue_trace(&span, req.headers());
        let metrics = self.layer.metrics.clone();
        let future = self.inner.call(req).instrument(span.clone());
        Box::pin(async move {
            let resp = future.await?;
            let (parts, body) = resp.into_parts();
            let code = if grpc {
                grpc_status(&parts.headers).map(RpcCode::Grpc)
            } else {
                Some(RpcCode::Http(parts.status.as_u16()))
            };
            let finish = Finish {
                metrics,
                method,
                grpc,
                grpc_web: grpc && is_grpc_web(&parts.headers),
                code,
                started,
                span,
            };
            Ok(http::Response::from_parts(
                parts,
                ObservedBody {
                    inner: body,
                    finish: Some(finish),
                },
            ))
        })
    }
}

/// Makes `span` a child of the caller's trace when the request carries a W3C
/// `traceparent` (Envoy forwards it). Without an OpenTelemetry layer
/// installed (no OTLP endpoint) setting the parent is a no-op.
pub fn continue_trace(span: &Span, headers: &HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

struct Headers<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc-web"))
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    std::str::from_utf8(headers.get("grpc-status")?.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// gRPC-Web sends its trailers as the body's last message: flag 0x80, a
/// 4-byte length, then `name:value\r\n` lines.
fn grpc_web_trailer_status(data: &[u8]) -> Option<i32> {
    if data.len() < 5 || data[0] & 0x80 == 0 {
        return None;
    }
    let text = std::str::from_utf8(&data[5..]).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("grpc-status")
            .then(|| value.trim().parse().ok())?
    })
}

/// Records the request when its response ends (or is dropped).
struct Finish {
    metrics: Arc<Metrics>,
    method: &'static str,
    grpc: bool,
    grpc_web: bool,
    code: Option<RpcCode>,
    started: Instant,
    span: Span,
}

impl Drop for Finish {
    fn drop(&mut self) {
        // A gRPC response without a status: the caller left before the end.
        let code = self.code.unwrap_or(if self.grpc {
            RpcCode::Grpc(1)
        } else {
            RpcCode::Http(499)
        });
        self.metrics.observe_rpc(
            RpcLabels {
                method: self.method,
                code,
            },
            self.started.elapsed().as_secs_f64(),
        );
        match code {
            RpcCode::Grpc(c) => {
                self.span.record("rpc.grpc.status_code", c);
                // Server-side error codes (OpenTelemetry's gRPC conventions).
                if matches!(c, 2 | 4 | 12 | 13 | 14 | 15) {
                    self.span.record("otel.status_code", "ERROR");
                }
            }
            RpcCode::Http(status) => {
                self.span
                    .record("http.response.status_code", i64::from(status));
                if status >= 500 {
                    self.span.record("otel.status_code", "ERROR");
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the gRPC status and its end.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        finish: Option<Finish>,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        use bytes::Buf as _;
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(finish) = this.finish.as_mut().filter(|f| f.grpc) {
                    if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                        finish.code = Some(RpcCode::Grpc(code));
                    } else if finish.grpc_web
                        && let Some(data) = frame.data_ref()
                        && let Some(code) = grpc_web_trailer_status(data.chunk())
                    {
                        finish.code = Some(RpcCode::Grpc(code));
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(mut finish) = this.finish.take()
                    && finish.grpc
                    && finish.code.is_none()
                {
                    // tonic always ends with an explicit status: a body that
                    // failed is INTERNAL, one without a status UNKNOWN.
                    let failed = matches!(polled, Poll::Ready(Some(Err(_))));
                    finish.code = Some(RpcCode::Grpc(if failed { 13 } else { 2 }));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;

    use super::*;

    #[test]
    fn traceparent_headers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let cx = TraceContextPropagator::new().extract(&Headers(&headers));
        let remote = cx.span().span_context().clone();
        assert!(remote.is_remote() && remote.is_sampled());
        assert_eq!(
            remote.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(remote.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn statuses_are_read_from_headers_and_grpc_web_trailers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers), Some(5));
        let text = b"grpc-status:0\r\ngrpc-message:\r\n";
        let mut frame = vec![0x80, 0, 0, 0, text.len() as u8];
        frame.extend_from_slice(text);
        assert_eq!(grpc_web_trailer_status(&frame), Some(0));
        frame[0] = 0;
        assert_eq!(grpc_web_trailer_status(&frame), None);
    }

    #[test]
    fn routes_are_interned_once() {
        let layer = ObserveLayer::new(Metrics::new(), ["/a.B/C".to_string()]);
        let first = layer.methods.route("/x/{id}");
        let second = layer.methods.route("/x/{id}");
        assert!(std::ptr::eq(first, second));
        assert!(layer.methods.grpc.contains("/a.B/C"));
    }
}
