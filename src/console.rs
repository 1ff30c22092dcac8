//! The web console's files (web/console/, built into `web/console/dist` by
//! scripts/setup) at `/console/` on agentd's port; Envoy routes both REST
//! ports there, and `/` redirects to it. The page talks to agentd only over
//! gRPC-Web, so every call it makes is an API call, checked like any other:
//! the files themselves are public (the page must load to ask for a key) and
//! hold no data.

use std::{path::PathBuf, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse as _, Redirect, Response},
    routing::get,
};
use tower::ServiceExt as _;
use tower_http::services::ServeDir;

/// Vite names every built asset after its content hash: a new build is new
/// URLs, so browsers may keep these forever. index.html names the current
/// ones and must be revalidated on every load.
const HASHED: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";
/// Only this origin's scripts and calls; no framing.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// The console uploads in chunks of 4 MiB (web/console/src/views/artifacts.ts):
/// fewer calls per file (each counts against the rate limit) than tonic's 4 MiB
/// default message limit would allow with its envelope.
pub const MAX_CHUNK_MESSAGE_BYTES: usize = 4 * 1024 * 1024 + 64 * 1024;

/// `/`, `/console` and everything under `/console/`. `dir` is the built
/// console; when it has no index.html, `/console/` says how to build it.
pub fn routes(dir: PathBuf) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/console/") }))
        .route(
            "/console",
            get(|| async { Redirect::temporary("/console/") }),
        )
        .route("/console/", get(serve))
        .route("/console/{*path}", get(serve))
        .with_state(Arc::new(dir))
}

/// Whether `dir` holds a built console (checked per request: a build made
/// while agentd runs is served at once).
pub fn is_built(dir: &std::path::Path) -> bool {
    dir.join("index.html").is_file()
}

async fn serve(State(dir): State<Arc<PathBuf>>, req: Request) -> Response {
    if !is_built(&dir) {
        return not_built(&dir);
    }
    let path = req
        .uri()
        .path()
        .strip_prefix("/console")
        .unwrap_or("/")
        .to_string();
    let (mut parts, body) = req.into_parts();
    parts.uri = match Uri::builder().path_and_query(path.as_str()).build() {
        Ok(uri) => uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    // Scripts and styles also come as .br/.gz files from the build
    // (web/console/compress.mjs), sent to browsers that accept them.
    let served = ServeDir::new(dir.as_path())
        .precompressed_br()
        .precompressed_gzip()
        .oneshot(Request::from_parts(parts, body))
        .await;
    let mut resp = match served {
        Ok(resp) => resp.map(Body::new),
        Err(never) => match never {},
    };
    let cache = if path.starts_with("/assets/") && resp.status().is_success() {
        HASHED
    } else {
        REVALIDATE
    };
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    // The body depends on Accept-Encoding (the precompressed copies): caches must know.
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

fn not_built(dir: &std::path::Path) -> Response {
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>agentd console not built</title>\
         <h1>The agentd console is not built</h1>\
         <p>agentd looked for it in <code>{}</code>. Build it with <code>scripts/setup</code> \
         (needs Node.js 20.19 or later and npm), or point <code>--console-dir</code> \
         (<code>AGENTD_CONSOLE_DIR</code>) at a built copy. The API works without it.</p>",
        html_escape(&dir.display().to_string())
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, REVALIDATE),
        ],
        html,
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
