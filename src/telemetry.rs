//! Logs and traces. One `tracing` subscriber: log lines as text or JSON on stderr, and spans
//! handed to OpenTelemetry (exported over OTLP/gRPC when `--otlp-endpoint` is set). A tower
//! layer opens a span per RPC that continues the caller's W3C `traceparent` and records the
//! trace id as a span field, so every log line inside a call carries it; [`trace_headers`]
//! gives the upstream requests (REST and CometD) the `traceparent` of the current span.
//!
//! Secrets never reach a log line: the gateway logs no credential, and the targets of
//! dependencies known to print them (`cookie_store` logs each `JSESSIONID` at debug) are cut
//! off whatever `RUST_LOG` says.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::task::{Context, Poll};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Log targets whose events can carry secrets at some level, never logged: `cookie_store`
/// prints cookie values (the agent's `JSESSIONID`) at debug.
const SECRET_TARGETS: &[&str] = &["cookie_store"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--otlp-endpoint: {0}")]
    Otlp(String),
    #[error("logging is already set up")]
    AlreadySet,
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes spans not yet exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Installs the process's subscriber. `default_filter` applies when `RUST_LOG` is unset.
    /// With an OTLP endpoint, must run inside the tokio runtime (the exporter's channel lives
    /// there).
    pub fn init(
        format: LogFormat,
        default_filter: &str,
        otlp_endpoint: Option<&reqwest::Url>,
    ) -> Result<Self, TelemetryError> {
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(env!("CARGO_PKG_NAME"))
            .build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if let Some(url) = otlp_endpoint {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url.as_str().trim_end_matches('/'))
                .build()
                .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();
        let tracer = provider.tracer(env!("CARGO_PKG_NAME"));

        let log_filter = || {
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(default_filter))
                .and(no_secrets())
        };
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_filter(log_filter())
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr)
                .with_filter(log_filter())
                .boxed(),
        };
        // Spans at info and above are traced whatever RUST_LOG says: the per-RPC span must
        // exist for its trace id to reach the logs and the upstream requests.
        // Every RPC makes spans, so what each one costs is per-call CPU: no busy/idle time
        // accounting on every poll, no source location or thread attributes (strings
        // allocated per span); the span names, fields and trace ids are what traces need.
        let traces = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(LevelFilter::INFO.and(no_secrets()));
        tracing_subscriber::registry()
            .with(logs)
            .with(traces)
            .try_init()
            .map_err(|_| TelemetryError::AlreadySet)?;
        Ok(Self { provider })
    }

    /// Exports the spans still buffered, then stops the exporter.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The SDK blocks while it flushes; keep that off the async workers.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

fn no_secrets<S>() -> impl tracing_subscriber::layer::Filter<S> {
    filter_fn(|meta| {
        // No allocation: this runs for every span and event the combined filter asks about.
        !SECRET_TARGETS.iter().any(|t| {
            meta.target()
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
    })
}

/// The current span's trace context as W3C `traceparent` (and `tracestate`) headers, for an
/// upstream request. Empty outside any traced span.
pub fn trace_headers() -> http::HeaderMap {
    let context = tracing::Span::current().context();
    let mut headers = http::HeaderMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
    headers
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Opens the span of each RPC, continuing the caller's `traceparent`.
#[derive(Debug, Clone, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = rpc_span(&request);
        self.inner.call(request).instrument(span)
    }
}

/// The span of one RPC: named after its path, child of the caller's trace if it sent one,
/// with the trace id as a field for the logs.
fn rpc_span<B>(request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    let span = tracing::info_span!("rpc", otel.name = %path, otel.kind = "server",
        rpc.system = "grpc", rpc.service = %service, rpc.method = %method,
        trace_id = tracing::field::Empty);
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}
