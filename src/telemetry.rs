//! Logs and traces. One `tracing` subscriber: log lines as text or JSON on stderr. A tower
//! layer gives every RPC a trace context continuing the caller's W3C `traceparent` and an
//! `rpc` span with the trace id as a field; [`insert_trace_headers`] gives the upstream
//! requests (REST and CometD) the `traceparent` of the current call.
//!
//! Two ways of carrying the trace context, chosen once at start:
//! - with `--otlp-endpoint`, spans are handed to OpenTelemetry (`tracing-opentelemetry`) and
//!   exported over OTLP/gRPC;
//! - without it, nothing is exported, so building OpenTelemetry spans would be pure cost,
//!   paid on every call: a task-local holds the call's small
//!   [`TraceContext`] instead (tasks spawned for the call take it along with [`propagate`]),
//!   the upstream headers are read from there, and the `rpc` span exists only for the logs.
//!
//! Secrets never reach a log line: the gateway logs no credential, and the targets of
//! dependencies known to print them (`cookie_store` logs each cookie it stores from a
//! response at debug) are cut off whatever `RUST_LOG` says.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Log targets whose events can carry secrets at some level, never logged: `cookie_store`
/// prints cookie values (the agent's `JSESSIONID`) at debug from `store_response_cookies`.
/// The gateway's jar calls `CookieStore::parse`, which logs nothing today; the cut stays as
/// the guard for the day a dependency's update or our own code takes the logging path.
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
    provider: Option<SdkTracerProvider>,
}

/// How this process carries trace context; set once by [`Telemetry::init`]. Unset (no
/// subscriber: library use, tests): nothing is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    OpenTelemetry,
    Light,
}

static MODE: OnceLock<Mode> = OnceLock::new();

fn mode() -> Option<Mode> {
    MODE.get().copied()
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
        let log_filter = || {
            without_secrets(
                EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| EnvFilter::new(default_filter)),
            )
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
        // With an exporter, spans at info and above are traced whatever RUST_LOG says: the
        // per-RPC span must exist for its trace context to reach the upstream requests.
        // Without one, no layer but the logs': the context travels in a task-local.
        let (traces, provider, mode) = match otlp_endpoint {
            Some(url) => {
                let (layer, provider) = opentelemetry_layer(url)?;
                (Some(layer), Some(provider), Mode::OpenTelemetry)
            }
            None => (None, None, Mode::Light),
        };
        // Not `.with(Option<Layer>)`: a `None` layer declares interest in every callsite,
        // which turned on every dependency's trace-level spans (h2 makes dozens per call).
        let subscriber = tracing_subscriber::registry().with(logs);
        match traces {
            Some(traces) => subscriber.with(traces).try_init(),
            None => subscriber.try_init(),
        }
        .map_err(|_| TelemetryError::AlreadySet)?;
        // One subscriber per process (`try_init` above), so one mode.
        let _ = MODE.set(mode);
        Ok(Self { provider })
    }

    /// Exports the spans still buffered, then stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK blocks while it flushes; keep that off the async workers.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

type TracesLayer =
    Box<dyn Layer<tracing_subscriber::layer::Layered<LogsLayer, Registry>> + Send + Sync>;
type LogsLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The OpenTelemetry bridge exporting over OTLP/gRPC to `url`. Must run inside the tokio
/// runtime (the exporter's channel lives there).
fn opentelemetry_layer(
    url: &reqwest::Url,
) -> Result<(TracesLayer, SdkTracerProvider), TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url.as_str().trim_end_matches('/'))
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(env!("CARGO_PKG_NAME"))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
    // Every RPC makes spans, so what each one costs is per-call CPU: no busy/idle time
    // accounting on every poll, no source location or thread attributes (strings allocated
    // per span); the span names, fields and trace ids are what traces need.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_filter(LevelFilter::INFO.and(no_secrets()))
        .boxed();
    Ok((layer, provider))
}

tokio::task_local! {
    /// The trace context of the RPC a task works for, when nothing is exported (`None`
    /// with an exporter, whose spans carry it). A task-local, not a span extension: it costs
    /// nothing per span or per poll, and needs no span at all when logs are at `warn`.
    static TRACE: Option<TraceContext>;
}

/// The current call's trace id, as a log field (`None`, so not printed, outside a call or
/// when spans are exported: the `rpc` span carries it then). Without an exporter a call has
/// a span only when the logs are at debug, so the lines logged about a call at info carry
/// it this way.
pub fn trace_id() -> Option<tracing::field::DisplayValue<impl std::fmt::Display>> {
    TRACE
        .try_with(|context| context.as_ref().map(|c| TraceIdHex(c.trace_id)))
        .ok()
        .flatten()
        .map(tracing::field::display)
}

/// `future` in the trace context of the current task (a task spawned for the RPC's work:
/// its upstream requests then carry the RPC's `traceparent`).
pub fn propagate<F: std::future::Future>(
    future: F,
) -> impl std::future::Future<Output = F::Output> {
    TRACE.scope(TRACE.try_with(Clone::clone).ok().flatten(), future)
}

/// The W3C trace context of one RPC when nothing is exported: the caller's trace id and
/// flags (or a new trace), and this RPC's own span id, which the upstream requests name as
/// their parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    state: Option<http::HeaderValue>,
}

/// The longest `tracestate` passed on (the W3C limit a vendor must propagate).
const MAX_TRACESTATE: usize = 512;
/// Named once: a name given as text is parsed on every lookup and insert.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

impl TraceContext {
    /// Continues the caller's `traceparent` if it is valid, else starts a trace (not
    /// sampled: this process records nothing).
    pub fn continuing(headers: &http::HeaderMap) -> Self {
        // W3C: an all-zero id is invalid.
        let span_id = nonzero_random(rand::random::<u64>);
        match headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            Some((trace_id, flags)) => Self {
                trace_id,
                span_id,
                flags,
                // A copy, not a clone: a received value is a slice of the connection's
                // read buffer, and the context can outlive the call (its agent's CometD
                // feed keeps it).
                state: headers
                    .get(TRACESTATE)
                    .filter(|v| v.len() <= MAX_TRACESTATE)
                    .and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok()),
            },
            None => Self {
                trace_id: nonzero_random(rand::random::<u128>),
                span_id,
                flags: 0,
                state: None,
            },
        }
    }

    /// The trace id as 32 lowercase hex digits, formatted only when written (a log line
    /// that nobody prints costs nothing).
    pub fn trace_id(&self) -> impl std::fmt::Display + 'static {
        TraceIdHex(self.trace_id)
    }

    /// `traceparent`, version 00: `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> http::HeaderValue {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut out[3..35], self.trace_id);
        hex_into(&mut out[36..52], u128::from(self.span_id));
        hex_into(&mut out[53..55], u128::from(self.flags));
        http::HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header")
    }
}

/// The low `out.len()` hex digits of `value`, lowercase, most significant first. By hand:
/// it runs for every upstream request, and a fixed-width result needs no `format!` machinery.
fn hex_into(out: &mut [u8], mut value: u128) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

struct TraceIdHex(u128);

impl std::fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = [0u8; 32];
        hex_into(&mut out, self.0);
        f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}

fn nonzero_random<T: PartialEq + Default>(draw: impl Fn() -> T) -> T {
    loop {
        let id = draw();
        if id != T::default() {
            return id;
        }
    }
}

/// The trace id and flags of a W3C `traceparent`, if valid: `version-traceid-parentid-flags`
/// in lowercase hex, ids not all zero, version `ff` forbidden, a later version may append
/// `-…` fields.
fn parse_traceparent(value: &str) -> Option<(u128, u8)> {
    fn hex(s: &str, len: usize) -> Option<u128> {
        let lower = s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        lower.then(|| u128::from_str_radix(s, 16).ok()).flatten()
    }
    let mut parts = value.trim().splitn(5, '-');
    let version = hex(parts.next()?, 2)?;
    let trace_id = hex(parts.next()?, 32)?;
    let parent_id = hex(parts.next()?, 16)?;
    let flags = hex(parts.next()?, 2)?;
    // Version 00 has exactly four fields; a later one may have more; ff is invalid.
    let rest_ok = match version {
        0 => parts.next().is_none(),
        0xff => false,
        _ => true,
    };
    (rest_ok && trace_id != 0 && parent_id != 0).then_some((trace_id, flags as u8))
}

/// `filter`, never enabling [`SECRET_TARGETS`].
fn without_secrets<S>(filter: EnvFilter) -> impl tracing_subscriber::layer::Filter<S> {
    filter.and(no_secrets())
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
    // It filters by target, not level: saying so lets the combined filter's hint be
    // RUST_LOG's level. Without a hint the process's maximum level was TRACE, so every
    // `log` record of a dependency (reqwest writes some per request) went through the
    // filter instead of being skipped where it is written.
    .with_max_level_hint(LevelFilter::TRACE)
}

/// Adds the current call's trace context as W3C `traceparent` (and `tracestate`) headers to
/// an upstream request's own headers; nothing outside a traced call.
pub fn insert_trace_headers(headers: &mut http::HeaderMap) {
    match mode() {
        None => {}
        Some(Mode::OpenTelemetry) => {
            let context = tracing::Span::current().context();
            TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
        }
        Some(Mode::Light) => {
            let _ = TRACE.try_with(|context| {
                if let Some(context) = context {
                    headers.insert(TRACEPARENT, context.traceparent());
                    if let Some(state) = &context.state {
                        headers.insert(TRACESTATE, state.clone());
                    }
                }
            });
        }
    }
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
    type Future = tokio::task::futures::TaskLocalFuture<
        Option<TraceContext>,
        tracing::instrument::Instrumented<S::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (span, context) = rpc_span(&request);
        TRACE.scope(context, self.inner.call(request).instrument(span))
    }
}

/// The span of one RPC, and its trace context when nothing is exported: named after its
/// path, child of the caller's trace if it sent one, with the trace id as a field for the
/// logs. One span per call with few fields (it is entered on every poll of the call, and
/// its fields are formatted when it opens); the lines about a call carry their own fields.
fn rpc_span<B>(request: &http::Request<B>) -> (tracing::Span, Option<TraceContext>) {
    let path = request.uri().path();
    // Under `grpc`, so `RUST_LOG=…,gws_sms_gateway::grpc=debug` shows the per-call lines
    // with the trace id.
    match mode() {
        // No telemetry installed (library use): nothing to carry.
        None => (tracing::Span::none(), None),
        Some(Mode::OpenTelemetry) => {
            // The OpenTelemetry names of a gRPC server span.
            let (service, method) = path
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or(("", ""));
            let span = tracing::info_span!(target: "gws_sms_gateway::grpc", "rpc",
                otel.name = %path, otel.kind = "server", rpc.system = "grpc",
                rpc.service = %service, rpc.method = %method,
                trace_id = tracing::field::Empty);
            if span.is_disabled() {
                return (span, None);
            }
            let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
            let _ = span.set_parent(parent);
            let trace_id = span.context().span().span_context().trace_id();
            if trace_id != opentelemetry::trace::TraceId::INVALID {
                span.record("trace_id", tracing::field::display(trace_id));
            }
            (span, None)
        }
        // At debug: a span is entered on every poll of the call, a cost on every call that only
        // the per-call debug lines need (the lines logged at info carry `trace_id` themselves).
        Some(Mode::Light) => {
            let context = TraceContext::continuing(request.headers());
            let span = tracing::debug_span!(target: "gws_sms_gateway::grpc", "rpc",
                path = %path, trace_id = %context.trace_id());
            (span, Some(context))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::Filter;

    #[test]
    fn the_log_filter_says_its_level() {
        // The process's maximum level, and so the `log` crate's, comes from this hint.
        let hint = |directives| {
            Filter::<Registry>::max_level_hint(&without_secrets(EnvFilter::new(directives)))
        };
        assert_eq!(hint("info"), Some(LevelFilter::INFO));
        assert_eq!(hint("warn"), Some(LevelFilter::WARN));
        assert_eq!(
            hint("warn,gws_sms_gateway::grpc=debug"),
            Some(LevelFilter::DEBUG)
        );
    }

    #[test]
    fn secret_targets_are_cut_off_even_at_trace() {
        #[derive(Clone, Default)]
        struct Written(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Written {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let written = Written::default();
        let sink = written.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || sink.clone())
            .with_filter(without_secrets(EnvFilter::new("trace")));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::debug!(target: "cookie_store::cookie_store", "inserting JSESSIONID=secret");
            tracing::debug!(target: "cookie_store", "JSESSIONID=secret");
            tracing::debug!(target: "cookie_storefront", "a target that only starts alike");
        });
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("only starts alike"), "{text}");
    }

    fn headers(traceparent: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", traceparent.parse().unwrap());
        h.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        h
    }

    #[test]
    fn continues_a_valid_traceparent_with_a_new_span_id() {
        let h = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let c = TraceContext::continuing(&h);
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let state = c.state.as_ref().unwrap();
        assert_ne!(
            state.as_bytes().as_ptr(),
            h["tracestate"].as_bytes().as_ptr(),
            "tracestate is a copy: the context may outlive the request's buffer"
        );
        let tp = c.traceparent().to_str().unwrap().to_string();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"), "{tp}");
        assert_ne!(&tp[36..52], "00f067aa0ba902b7", "the gateway's own span id");
        assert_eq!(c.state.unwrap(), "congo=t61rcWkgMzE");
        // A later version may carry more fields; its known ones still apply.
        let later = TraceContext::continuing(&headers(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever",
        ));
        assert_eq!(
            later.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(later.traceparent().to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn hex_by_hand_is_the_formatted_hex() {
        for v in [
            0u128,
            1,
            0xabc,
            u128::MAX,
            0x4bf92f3577b34da6a3ce929d0e0e4736,
        ] {
            assert_eq!(TraceIdHex(v).to_string(), format!("{v:032x}"));
            let c = TraceContext {
                trace_id: v,
                span_id: v as u64,
                flags: v as u8,
                state: None,
            };
            let expected = format!("00-{v:032x}-{:016x}-{:02x}", v as u64, v as u8);
            assert_eq!(c.traceparent(), expected.as_str());
        }
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_unsampled_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let c = TraceContext::continuing(&headers(bad));
            let (id, tp) = (c.trace_id().to_string(), c.traceparent());
            assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
            assert_ne!(id, "0".repeat(32), "{bad:?}");
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(tp.to_str().unwrap().ends_with("-00"), "{bad:?}");
            assert_eq!(
                c.state, None,
                "{bad:?}: no tracestate without its traceparent"
            );
        }
    }
}
