//! Logs and traces: `tracing` everywhere; OpenTelemetry export over OTLP/gRPC
//! only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*`
//! variables tune it: `OTEL_SERVICE_NAME`, `OTEL_BSP_SCHEDULE_DELAY`, …).
//! Without it only the plain `tracing` spans exist (no exporter). The RPC
//! layer (`api::observe`) continues callers' traces.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// The log filter unless `RUST_LOG` says otherwise; spans follow it too.
const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes what is pending.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber: logs to stderr and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans to OTLP. Must run inside the
/// Tokio runtime (the gRPC exporter's channel lives there).
pub fn init() -> anyhow::Result<Telemetry> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    let fmt = tracing_subscriber::fmt::layer().with_filter(filter());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty());
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(Telemetry { provider: None });
    };
    // The endpoint and the other OTEL_EXPORTER_OTLP_* settings come from the
    // environment.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("agentd");
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("agentd"))
        // Lean spans: the attributes set here, no thread/busy-time extras.
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(filter());
    tracing_subscriber::registry().with(fmt).with(otel).init();
    tracing::info!(%endpoint, "exporting traces over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

impl Telemetry {
    /// Exports the spans still buffered, then stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // Blocks until the export thread is done; keep the runtime free.
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                eprintln!("agentd: flushing traces failed: {e}");
            }
        }
    }
}
