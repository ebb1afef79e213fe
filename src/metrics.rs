//! Prometheus metrics on `prometheus-client`: the gateway's series, the one tower layer that
//! observes every RPC to its final status (streams included: a stream's code is known when
//! its response body ends, so the body is wrapped), and `GET /metrics` served by axum on its
//! own address in the Prometheus text format (version 0.0.4). The gRPC series carry
//! go-grpc-prometheus's names and labels so existing dashboards work; the gateway's own
//! series start with `gws_gateway_`.
//!
//! This module sits at the bottom of the tree and imports no other module of the crate: the
//! places that count pass label words they own (`Outcome::label()`, `UpstreamError::label()`,
//! `Notification::label()`, ...), each from a bounded set.
//!
//! Counting takes no process-wide lock and hashes no labels: a family's lock is taken only
//! the first time a label set is seen. After that a counter or histogram is an `Arc` handle
//! found once and kept: the gRPC layer keeps each method's handles beside the method, and a
//! [`Labeled`] family keeps the handles it has handed out in a short array searched by
//! comparing label words (`Found`); upstream calls find their operation's handles the same way.
//!
//! Adding a metric: declare a `static` below (a [`Gauge`] or [`Counter`] without labels, or
//! a [`Labeled`] family with its label names), and add one `register` line in `registry()`,
//! in the order it should be rendered. Names are written as they appear in the output;
//! `register` drops the `_total` that the crate appends to counters, and the final `.` it
//! appends to help texts.

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Metric, Registry};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// Histogram buckets in seconds: Prometheus's defaults, which go-grpc-prometheus uses.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

// --- handles found once -----------------------------------------------------------------

/// Values already found, by key: a short array searched in order and filled on first use
/// (one slot per distinct key, never emptied). Finding one compares keys (label words, a few
/// bytes each) with no lock and no hashing; `make` runs once per key, where the family's own
/// lock is taken. A full array answers `None`, and the caller falls back to the family.
struct Found<K, V, const N: usize>([OnceLock<(K, V)>; N]);

impl<K: Copy + PartialEq, V, const N: usize> Found<K, V, N> {
    fn new() -> Self {
        Self(std::array::from_fn(|_| OnceLock::new()))
    }

    fn get(&self, key: K, make: impl Fn(K) -> V) -> Option<&V> {
        for slot in &self.0 {
            // A slot another thread filled first with another key is passed over.
            let (k, v) = match slot.get() {
                Some(entry) => entry,
                None => slot.get_or_init(|| (key, make(key))),
            };
            if *k == key {
                return Some(v);
            }
        }
        None
    }
}

/// A family labelled by `L` (name, word) pairs, its series made by a plain `fn`.
type WordFamily<const L: usize, M> = Family<[(&'static str, &'static str); L], M, fn() -> M>;

/// A family whose label values are words (`&'static str`) from bounded sets, with the
/// handles it has handed out kept in a `Found`. Callers name the values in the order of
/// the label names given at declaration.
pub struct Labeled<const L: usize, M: 'static> {
    names: [&'static str; L],
    family: WordFamily<L, M>,
    found: Found<[&'static str; L], M, 24>,
}

impl<const L: usize, M: Clone + Default> Labeled<L, M> {
    fn new(names: [&'static str; L]) -> Self {
        Self::with(names, M::default)
    }
}

impl<const L: usize, M: Clone> Labeled<L, M> {
    fn with(names: [&'static str; L], make: fn() -> M) -> Self {
        Self {
            names,
            family: Family::new_with_constructor(make),
            found: Found::new(),
        }
    }

    fn set(&self, values: [&'static str; L]) -> [(&'static str, &'static str); L] {
        std::array::from_fn(|i| (self.names[i], values[i]))
    }

    /// The series for `values` (created at zero on first use), unless `found` is full.
    fn found(&self, values: [&'static str; L]) -> Option<&M> {
        let make = |values| self.family.get_or_create_owned(&self.set(values));
        self.found.get(values, make)
    }

    /// The series for `values`, to keep on a hot path.
    pub fn handle(&self, values: [&'static str; L]) -> M {
        match self.found(values) {
            Some(series) => series.clone(),
            None => self.family.get_or_create_owned(&self.set(values)),
        }
    }

    fn family(&self) -> impl Metric
    where
        WordFamily<L, M>: Metric,
    {
        self.family.clone()
    }
}

impl<const L: usize> Labeled<L, Counter> {
    pub fn inc(&self, values: [&'static str; L]) {
        match self.found(values) {
            Some(counter) => counter.inc(),
            None => self.family.get_or_create(&self.set(values)).inc(),
        };
    }

    /// The current value for these labels (0 if never counted), without creating the series.
    pub fn get(&self, values: [&'static str; L]) -> u64 {
        self.family.get(&self.set(values)).map_or(0, |c| c.get())
    }
}

// --- gauges held by a guard -------------------------------------------------------------

/// Adds one to `gauge` now and takes it back when the guard drops: the gauge cannot drift
/// when the holder ends by any path (return, error, cancellation).
pub fn hold(gauge: &'static Gauge) -> GaugeGuard {
    gauge.inc();
    GaugeGuard(gauge)
}

pub struct GaugeGuard(&'static Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// --- the series -------------------------------------------------------------------------

/// The labels of the gRPC series but `grpc_server_handled_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GrpcLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

/// `grpc_server_handled_total`'s labels: the method's and its final code.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GrpcCodeLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

static GRPC_STARTED: LazyLock<Family<GrpcLabels, Counter>> = LazyLock::new(Family::default);
static GRPC_HANDLED: LazyLock<Family<GrpcCodeLabels, Counter>> = LazyLock::new(Family::default);
static GRPC_MSG_SENT: LazyLock<Family<GrpcLabels, Counter>> = LazyLock::new(Family::default);
/// Histograms are made with [`BUCKETS`], by a plain `fn`.
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

static GRPC_HANDLING: LazyLock<HistogramFamily<GrpcLabels>> =
    LazyLock::new(|| Family::new_with_constructor(seconds_histogram));

/// The outcome of one GWS REST exchange as a label value: a word (`ok`, `timeout`), or a
/// word and a number from a bounded set (`gws_status_6`, `http_503`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamOutcome {
    word: &'static str,
    number: Option<u16>,
}

impl UpstreamOutcome {
    pub const OK: Self = Self::word("ok");

    pub const fn word(word: &'static str) -> Self {
        Self { word, number: None }
    }

    /// `{word}_{number}`.
    pub const fn numbered(word: &'static str, number: u16) -> Self {
        Self {
            word,
            number: Some(number),
        }
    }
}

impl EncodeLabelValue for UpstreamOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(self.word)?;
        match self.number {
            Some(number) => write!(encoder, "_{number}"),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    operation: &'static str,
    outcome: UpstreamOutcome,
}

static UPSTREAM_REQUESTS: LazyLock<Family<UpstreamLabels, Counter>> =
    LazyLock::new(Family::default);
static UPSTREAM_SECONDS: LazyLock<Labeled<1, Histogram>> =
    LazyLock::new(|| Labeled::with(["operation"], seconds_histogram));

/// One operation's upstream series: its latency, and its counters by outcome.
struct OperationSeries {
    seconds: Histogram,
    outcomes: Found<UpstreamOutcome, Counter, 16>,
}

/// Every operation's series, found by its name.
static UPSTREAM: LazyLock<Found<&'static str, OperationSeries, 64>> = LazyLock::new(Found::new);

pub static AGENTS: LazyLock<Gauge> = LazyLock::new(Gauge::default);
pub static COMETD_SESSIONS: LazyLock<Gauge> = LazyLock::new(Gauge::default);
pub static COMETD_HANDSHAKES: LazyLock<Labeled<1, Counter>> =
    LazyLock::new(|| Labeled::new(["kind"]));
pub static NOTIFICATIONS: LazyLock<Labeled<1, Counter>> = LazyLock::new(|| Labeled::new(["kind"]));
pub static NOTIFICATIONS_UNMAPPED: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static CLUSTER_STALE: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static STREAMS_OPEN: LazyLock<Gauge> = LazyLock::new(Gauge::default);
pub static STREAMS_CUT: LazyLock<Labeled<1, Counter>> = LazyLock::new(|| Labeled::new(["reason"]));
pub static REPLAY: LazyLock<Labeled<1, Counter>> = LazyLock::new(|| Labeled::new(["result"]));
pub static OUTCOME_WAITS: LazyLock<Labeled<1, Counter>> =
    LazyLock::new(|| Labeled::new(["result"]));
pub static OPEN_FILES_LIMIT: LazyLock<Gauge> = LazyLock::new(Gauge::default);
pub static DESCRIPTORS_EXHAUSTED: LazyLock<Labeled<1, Counter>> =
    LazyLock::new(|| Labeled::new(["place"]));
pub static ACCEPT_ERRORS: LazyLock<Labeled<2, Counter>> =
    LazyLock::new(|| Labeled::new(["listener", "kind"]));
pub static HANDSHAKES_DROPPED: LazyLock<Labeled<2, Counter>> =
    LazyLock::new(|| Labeled::new(["listener", "reason"]));
pub static UPSTREAM_IN_FLIGHT: LazyLock<Gauge> = LazyLock::new(Gauge::default);
pub static UPSTREAM_WAITING: LazyLock<Gauge> = LazyLock::new(Gauge::default);

/// Registers `metric` under the `name` and `help` the output shows.
fn register(r: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    let name = match metric.metric_type() {
        MetricType::Counter => name.strip_suffix("_total").expect("counters end in _total"),
        _ => name,
    };
    let help = help
        .strip_suffix('.')
        .expect("help texts end in a full stop");
    r.register(name, help, metric);
}

/// Every series, in the order they are rendered. Names and help texts are the output's.
fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
        let mut r = Registry::default();
        register(
            &mut r,
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            GRPC_STARTED.clone(),
        );
        register(
            &mut r,
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            GRPC_HANDLED.clone(),
        );
        register(
            &mut r,
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            GRPC_MSG_SENT.clone(),
        );
        register(
            &mut r,
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            GRPC_HANDLING.clone(),
        );
        register(
            &mut r,
            "gws_gateway_upstream_requests_total",
            "GWS REST requests by operation and outcome (ok, gws_status_<statusCode>, http_<status>, timeout, deadline_too_short and no_slot (none sent), descriptors_exhausted, transport, bad_body).",
            UPSTREAM_REQUESTS.clone(),
        );
        register(
            &mut r,
            "gws_gateway_upstream_request_duration_seconds",
            "Latency of GWS REST requests (the whole exchange, CSRF round trips included).",
            UPSTREAM_SECONDS.family(),
        );
        register(
            &mut r,
            "gws_gateway_agents",
            "Agents whose upstream state (cookies, CSRF token) the gateway holds.",
            AGENTS.clone(),
        );
        register(
            &mut r,
            "gws_gateway_cometd_sessions",
            "Live upstream CometD sessions (one per agent with streams or outcome waits).",
            COMETD_SESSIONS.clone(),
        );
        register(
            &mut r,
            "gws_gateway_cometd_handshakes_total",
            "Upstream CometD sessions subscribed: kind=initial for a new session, rehandshake after a lost one was restored.",
            COMETD_HANDSHAKES.family(),
        );
        register(
            &mut r,
            "gws_gateway_notifications_total",
            "Notifications received from GWS, by kind (notificationType, MessageLogUpdated, or other).",
            NOTIFICATIONS.family(),
        );
        register(
            &mut r,
            "gws_gateway_notifications_unmapped_total",
            "Notifications that could not be mapped to the gRPC contract and were skipped.",
            NOTIFICATIONS_UNMAPPED.clone(),
        );
        register(
            &mut r,
            "gws_gateway_cluster_stale_publishes_total",
            "Cluster mode: messages of an owner that had lost its lease, refused or dropped.",
            CLUSTER_STALE.clone(),
        );
        register(
            &mut r,
            "gws_gateway_streams_open",
            "SessionEvents streams open now.",
            STREAMS_OPEN.clone(),
        );
        register(
            &mut r,
            "gws_gateway_streams_cut_total",
            "SessionEvents streams ended by the gateway or the client, by reason (slow_consumer, unavailable, client_gone, or the status code).",
            STREAMS_CUT.family(),
        );
        register(
            &mut r,
            "gws_gateway_replay_total",
            "Resume attempts: result=hit when replayed from the buffer, gap when the token was too old or foreign.",
            REPLAY.family(),
        );
        register(
            &mut r,
            "gws_gateway_outcome_waits_total",
            "wait_for_outcome calls by result (confirmed, unconfirmed, failed).",
            OUTCOME_WAITS.family(),
        );
        register(
            &mut r,
            "gws_gateway_open_files_limit",
            "The soft open-files limit (RLIMIT_NOFILE) in effect, after raising it to the hard limit at start.",
            OPEN_FILES_LIMIT.clone(),
        );
        register(
            &mut r,
            "gws_gateway_descriptors_exhausted_total",
            "Times the process ran out of file descriptors (EMFILE/ENFILE), by place (grpc_accept, health_accept, upstream, feed).",
            DESCRIPTORS_EXHAUSTED.family(),
        );
        register(
            &mut r,
            "gws_gateway_accept_errors_total",
            "Failed accepts by listener (grpc, health) and kind (descriptors, other); accepting backs off after each.",
            ACCEPT_ERRORS.family(),
        );
        register(
            &mut r,
            "gws_gateway_handshakes_dropped_total",
            "Connections closed before serving, by listener and reason: timeout (no TLS handshake or HTTP/2 preface within --handshake-timeout), evicted (the oldest pending one, to make room under --max-pending-handshakes), failed (TLS handshake error or closed early).",
            HANDSHAKES_DROPPED.family(),
        );
        register(
            &mut r,
            "gws_gateway_upstream_in_flight",
            "REST calls to GWS holding one of the --upstream-max-in-flight slots now.",
            UPSTREAM_IN_FLIGHT.clone(),
        );
        register(
            &mut r,
            "gws_gateway_upstream_waiting",
            "REST calls waiting for an --upstream-max-in-flight slot now (in arrival order).",
            UPSTREAM_WAITING.clone(),
        );
        r
    });
    &REGISTRY
}

/// Renders every series in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry())
        .expect("writing to a String cannot fail");
    out
}

// --- recording helpers for the places that count ---------------------------------------

/// Records one GWS REST exchange: its outcome and its latency.
pub fn upstream_request(operation: &'static str, outcome: UpstreamOutcome, elapsed: Duration) {
    let make = |operation| OperationSeries {
        seconds: UPSTREAM_SECONDS.handle([operation]),
        outcomes: Found::new(),
    };
    let count = |series: &OperationSeries| {
        let labels = || UpstreamLabels { operation, outcome };
        match series.outcomes.get(outcome, |_| {
            UPSTREAM_REQUESTS.get_or_create_owned(&labels())
        }) {
            Some(counter) => counter.inc(),
            None => UPSTREAM_REQUESTS.get_or_create(&labels()).inc(),
        };
        series.seconds.observe(elapsed.as_secs_f64());
    };
    match UPSTREAM.get(operation, make) {
        Some(series) => count(series),
        None => count(&make(operation)),
    }
}

// --- the tower layer --------------------------------------------------------------------

/// What the layer knows of a method: its labels, and its series once first counted (found
/// once, not by their labels on every call).
struct MethodSeries {
    labels: GrpcLabels,
    /// A SessionEvents-like stream of the gateway's own service: counted in
    /// `gws_gateway_streams_*`.
    gateway_stream: bool,
    started: OnceLock<Counter>,
    msg_sent: OnceLock<Counter>,
    handling: OnceLock<Histogram>,
    /// By code (`tonic::Code as usize`, 0..=16).
    handled: [OnceLock<Counter>; 17],
}

impl MethodSeries {
    fn started(&self) -> &Counter {
        self.started
            .get_or_init(|| GRPC_STARTED.get_or_create_owned(&self.labels))
    }

    fn msg_sent(&self) -> &Counter {
        self.msg_sent
            .get_or_init(|| GRPC_MSG_SENT.get_or_create_owned(&self.labels))
    }

    fn handling(&self) -> &Histogram {
        self.handling
            .get_or_init(|| GRPC_HANDLING.get_or_create_owned(&self.labels))
    }

    fn handled(&self, code: tonic::Code) -> &Counter {
        // `code_label` matches every `tonic::Code` (0..=16, checked at compile time below),
        // so each code has its own slot.
        const _: () = assert!(tonic::Code::Unauthenticated as usize == 16);
        self.handled[code as usize].get_or_init(|| {
            let GrpcLabels {
                grpc_type,
                grpc_service,
                grpc_method,
            } = self.labels.clone();
            GRPC_HANDLED.get_or_create_owned(&GrpcCodeLabels {
                grpc_type,
                grpc_service,
                grpc_method,
                grpc_code: code_label(code),
            })
        })
    }
}

/// Observes every RPC of the methods described by the given descriptor sets. Calls to paths
/// that name no known method are not counted: an attacker-chosen path must not create series.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    methods: Arc<Methods>,
}

/// The known methods by path (`/package.Service/Method`), sorted: a call finds its method
/// by a binary search over a few dozen paths (string comparisons, no hashing).
struct Methods(Box<[(String, Arc<MethodSeries>)]>);

impl Methods {
    fn get(&self, path: &str) -> Option<&Arc<MethodSeries>> {
        let found = self.0.binary_search_by(|(p, _)| p.as_str().cmp(path));
        found.ok().map(|at| &self.0[at].1)
    }
}

impl GrpcMetricsLayer {
    /// `gateway_service` names the service whose server streams are the gateway's streams.
    pub fn from_descriptor_sets(sets: &[&[u8]], gateway_service: &str) -> Self {
        use prost::Message;
        let mut methods = std::collections::BTreeMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let full = match file.package() {
                        "" => service.name().to_string(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        let series = MethodSeries {
                            labels: GrpcLabels {
                                grpc_type: kind,
                                grpc_service: full.clone(),
                                grpc_method: method.name().to_string(),
                            },
                            gateway_stream: kind == "server_stream" && full == gateway_service,
                            started: OnceLock::new(),
                            msg_sent: OnceLock::new(),
                            handling: OnceLock::new(),
                            handled: std::array::from_fn(|_| OnceLock::new()),
                        };
                        // A later set describing the same method wins.
                        let path = format!("/{full}/{}", method.name());
                        methods.insert(path, Arc::new(series));
                    }
                }
            }
        }
        Self {
            methods: Arc::new(Methods(methods.into_iter().collect())),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
    ResBody::Data: AsRef<[u8]>,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = self.methods.get(request.uri().path()).map(|labels| {
            labels.started().inc();
            Call {
                labels: labels.clone(),
                started: Instant::now(),
                _stream_open: labels.gateway_stream.then(|| hold(&STREAMS_OPEN)),
            }
        });
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let (parts, body) = response.into_parts();
            // A trailers-only response (every error before the first message) carries the
            // status in its headers.
            let code = grpc_status(&parts.headers);
            let body = ObservedBody {
                inner: body,
                call,
                code,
                framing: Framing::default(),
            };
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// An RPC being observed.
struct Call {
    labels: Arc<MethodSeries>,
    started: Instant,
    // Held, not read: dropping it takes the stream off the gauge.
    _stream_open: Option<GaugeGuard>,
}

impl Call {
    fn finish(self, code: tonic::Code) {
        let l = &self.labels;
        l.handled(code).inc();
        l.handling().observe(self.started.elapsed().as_secs_f64());
        if l.gateway_stream && code != tonic::Code::Ok {
            let reason = match code {
                tonic::Code::ResourceExhausted => "slow_consumer",
                tonic::Code::Unavailable => "unavailable",
                tonic::Code::Cancelled => "client_gone",
                _ => code_label(code),
            };
            STREAMS_CUT.inc([reason]);
        }
    }
}

/// Counts whole gRPC messages in the response bytes (5-byte prefix: flag, big-endian
/// length), however the encoder chunked them into frames.
#[derive(Debug, Default)]
struct Framing {
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
}

impl Framing {
    /// Returns how many messages completed in `data`.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut done = 0;
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                if self.body_left == 0 {
                    done += 1;
                }
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len == 0 {
                    done += 1;
                } else {
                    self.body_left = len;
                }
            }
        }
        done
    }
}

/// A response body that reports the RPC's final status when it ends: from the trailers,
/// or `CANCELLED` when it is dropped unfinished (the client went away), as grpc-go does.
pub struct ObservedBody<B> {
    inner: B,
    call: Option<Call>,
    code: Option<tonic::Code>,
    framing: Framing,
}

impl<B> ObservedBody<B> {
    fn finish(&mut self, code: tonic::Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body + Unpin,
    B::Data: AsRef<[u8]>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(call) = &this.call {
                        let sent = this.framing.feed(data.as_ref());
                        if sent > 0 {
                            call.labels.msg_sent().inc_by(sent);
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(tonic::Code::Unknown);
                    this.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(tonic::Code::Internal),
            Poll::Ready(None) => {
                let code = this.code.unwrap_or(tonic::Code::Unknown);
                this.finish(code);
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

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        self.finish(code);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let value = headers.get(GRPC_STATUS)?.to_str().ok()?;
    Some(tonic::Code::from(value.parse::<i32>().ok()?))
}

/// go-grpc-prometheus's `grpc_code` values: the Go names of the codes.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                )],
                render(),
            )
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HELP and TYPE lines of every family, as the hand-made registry rendered them
    /// before this crate moved to prometheus-client (dashboards and scrapers read them).
    const HEADERS: &[&str] = &[
        "# HELP grpc_server_started_total Total number of RPCs started on the server.\n# TYPE grpc_server_started_total counter\n",
        "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n# TYPE grpc_server_handled_total counter\n",
        "# HELP grpc_server_msg_sent_total Total number of gRPC stream messages sent by the server.\n# TYPE grpc_server_msg_sent_total counter\n",
        "# HELP grpc_server_handling_seconds Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.\n# TYPE grpc_server_handling_seconds histogram\n",
        "# HELP gws_gateway_upstream_requests_total GWS REST requests by operation and outcome (ok, gws_status_<statusCode>, http_<status>, timeout, deadline_too_short and no_slot (none sent), descriptors_exhausted, transport, bad_body).\n# TYPE gws_gateway_upstream_requests_total counter\n",
        "# HELP gws_gateway_upstream_request_duration_seconds Latency of GWS REST requests (the whole exchange, CSRF round trips included).\n# TYPE gws_gateway_upstream_request_duration_seconds histogram\n",
        "# HELP gws_gateway_agents Agents whose upstream state (cookies, CSRF token) the gateway holds.\n# TYPE gws_gateway_agents gauge\n",
        "# HELP gws_gateway_cometd_sessions Live upstream CometD sessions (one per agent with streams or outcome waits).\n# TYPE gws_gateway_cometd_sessions gauge\n",
        "# HELP gws_gateway_cometd_handshakes_total Upstream CometD sessions subscribed: kind=initial for a new session, rehandshake after a lost one was restored.\n# TYPE gws_gateway_cometd_handshakes_total counter\n",
        "# HELP gws_gateway_notifications_total Notifications received from GWS, by kind (notificationType, MessageLogUpdated, or other).\n# TYPE gws_gateway_notifications_total counter\n",
        "# HELP gws_gateway_notifications_unmapped_total Notifications that could not be mapped to the gRPC contract and were skipped.\n# TYPE gws_gateway_notifications_unmapped_total counter\n",
        "# HELP gws_gateway_streams_open SessionEvents streams open now.\n# TYPE gws_gateway_streams_open gauge\n",
        "# HELP gws_gateway_streams_cut_total SessionEvents streams ended by the gateway or the client, by reason (slow_consumer, unavailable, client_gone, or the status code).\n# TYPE gws_gateway_streams_cut_total counter\n",
        "# HELP gws_gateway_replay_total Resume attempts: result=hit when replayed from the buffer, gap when the token was too old or foreign.\n# TYPE gws_gateway_replay_total counter\n",
        "# HELP gws_gateway_outcome_waits_total wait_for_outcome calls by result (confirmed, unconfirmed, failed).\n# TYPE gws_gateway_outcome_waits_total counter\n",
        "# HELP gws_gateway_open_files_limit The soft open-files limit (RLIMIT_NOFILE) in effect, after raising it to the hard limit at start.\n# TYPE gws_gateway_open_files_limit gauge\n",
        "# HELP gws_gateway_descriptors_exhausted_total Times the process ran out of file descriptors (EMFILE/ENFILE), by place (grpc_accept, health_accept, upstream, feed).\n# TYPE gws_gateway_descriptors_exhausted_total counter\n",
        "# HELP gws_gateway_accept_errors_total Failed accepts by listener (grpc, health) and kind (descriptors, other); accepting backs off after each.\n# TYPE gws_gateway_accept_errors_total counter\n",
        "# HELP gws_gateway_handshakes_dropped_total Connections closed before serving, by listener and reason: timeout (no TLS handshake or HTTP/2 preface within --handshake-timeout), evicted (the oldest pending one, to make room under --max-pending-handshakes), failed (TLS handshake error or closed early).\n# TYPE gws_gateway_handshakes_dropped_total counter\n",
        "# HELP gws_gateway_upstream_in_flight REST calls to GWS holding one of the --upstream-max-in-flight slots now.\n# TYPE gws_gateway_upstream_in_flight gauge\n",
        "# HELP gws_gateway_upstream_waiting REST calls waiting for an --upstream-max-in-flight slot now (in arrival order).\n# TYPE gws_gateway_upstream_waiting gauge\n",
    ];

    #[test]
    fn every_family_keeps_its_name_help_and_type() {
        // Families without series are left out of the output: give each one.
        let layer = GrpcMetricsLayer::from_descriptor_sets(
            &[crate::proto::FILE_DESCRIPTOR_SET],
            "gws.sms.v1.SmsSessionService",
        );
        let m = layer
            .methods
            .get("/gws.sms.v1.SmsSessionService/Reject")
            .unwrap();
        m.started().inc();
        m.msg_sent().inc();
        m.handling().observe(0.001);
        m.handled(tonic::Code::Ok).inc();
        upstream_request("THeaders", UpstreamOutcome::OK, Duration::ZERO);
        COMETD_HANDSHAKES.inc(["t_headers"]);
        NOTIFICATIONS.inc(["t_headers"]);
        STREAMS_CUT.inc(["t_headers"]);
        REPLAY.inc(["t_headers"]);
        OUTCOME_WAITS.inc(["t_headers"]);
        DESCRIPTORS_EXHAUSTED.inc(["t_headers"]);
        ACCEPT_ERRORS.inc(["t_headers", "x"]);
        HANDSHAKES_DROPPED.inc(["t_headers", "x"]);
        let out = render();
        let mut from = 0;
        for header in HEADERS {
            let at = out[from..]
                .find(header)
                .unwrap_or_else(|| panic!("{header:?} missing or out of order in\n{out}"));
            from += at + header.len();
        }
        assert!(!out.contains("# EOF"), "{out}");
        // Counters carry `_total` once; histograms their buckets, sum and count.
        assert!(
            out.contains("gws_gateway_notifications_unmapped_total "),
            "{out}"
        );
        assert!(!out.contains("_total_total"), "{out}");
        assert!(
            out.contains("gws_gateway_replay_total{result=\"t_headers\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gws_gateway_accept_errors_total{listener=\"t_headers\",kind=\"x\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn histograms_render_go_style_buckets() {
        upstream_request("THisto", UpstreamOutcome::OK, Duration::from_millis(20));
        upstream_request("THisto", UpstreamOutcome::OK, Duration::from_secs(3));
        let out = render();
        let series = |suffix: &str, le: Option<&str>| match le {
            Some(le) => format!(
                "gws_gateway_upstream_request_duration_seconds_{suffix}{{operation=\"THisto\",le=\"{le}\"}}"
            ),
            None => format!(
                "gws_gateway_upstream_request_duration_seconds_{suffix}{{operation=\"THisto\"}}"
            ),
        };
        for (le, n) in [
            ("0.01", 0),
            ("0.025", 1),
            ("1", 1),
            ("5", 2),
            ("10", 2),
            ("+Inf", 2),
        ] {
            let line = format!("{} {n}\n", series("bucket", Some(le)));
            assert!(out.contains(&line), "{line}{out}");
        }
        assert!(
            out.contains(&format!("{} 2\n", series("count", None))),
            "{out}"
        );
        assert!(
            out.contains(&format!("{} 3.02", series("sum", None))),
            "{out}"
        );
    }

    #[test]
    fn upstream_outcomes_are_counted_apart() {
        upstream_request("TOutcomes", UpstreamOutcome::OK, Duration::ZERO);
        upstream_request(
            "TOutcomes",
            UpstreamOutcome::numbered("gws_status", 6),
            Duration::ZERO,
        );
        upstream_request(
            "TOutcomes",
            UpstreamOutcome::numbered("gws_status", 6),
            Duration::ZERO,
        );
        upstream_request(
            "TOutcomes",
            UpstreamOutcome::numbered("http", 503),
            Duration::ZERO,
        );
        upstream_request(
            "TOutcomes",
            UpstreamOutcome::word("timeout"),
            Duration::ZERO,
        );
        let out = render();
        for (outcome, n) in [
            ("ok", 1),
            ("gws_status_6", 2),
            ("http_503", 1),
            ("timeout", 1),
        ] {
            let line = format!(
                "gws_gateway_upstream_requests_total{{operation=\"TOutcomes\",outcome=\"{outcome}\"}} {n}\n"
            );
            assert!(out.contains(&line), "{line}{out}");
        }
        assert!(
            out.contains(
                "gws_gateway_upstream_request_duration_seconds_count{operation=\"TOutcomes\"} 5\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn found_handles_are_told_apart_by_every_value() {
        let sets: [[&'static str; 2]; 6] = [
            ["t_ab", "c"],
            ["t_a", "bc"],
            ["", "t_abc"],
            ["unary", "gws.sms.v1.SmsSessionService"],
            ["unary", "gws.sms.v1.SmsSessionServicf"],
            ["12345678", "12345678"],
        ];
        for (n, labels) in sets.iter().enumerate() {
            for _ in 0..=n {
                ACCEPT_ERRORS.inc(*labels);
            }
        }
        for (n, labels) in sets.iter().enumerate() {
            assert_eq!(ACCEPT_ERRORS.get(*labels), n as u64 + 1, "{labels:?}");
        }
        assert_eq!(ACCEPT_ERRORS.get(["t_abc", ""]), 0);
        // A handle counts in the same series.
        let handle = ACCEPT_ERRORS.handle(["t_a", "bc"]);
        handle.inc_by(2);
        assert_eq!(ACCEPT_ERRORS.get(["t_a", "bc"]), 4);
    }

    #[test]
    fn a_full_found_array_falls_back_to_the_family() {
        let found: Found<u32, u32, 2> = Found::new();
        assert_eq!(found.get(7, |k| k * 10), Some(&70));
        assert_eq!(found.get(8, |k| k * 10), Some(&80));
        assert_eq!(found.get(7, |_| unreachable!("found once")), Some(&70));
        assert_eq!(found.get(9, |k| k * 10), None);

        // More label sets than a `Labeled` keeps are still counted, each in its own series.
        let words: Vec<&'static str> = (0..40)
            .map(|i| &*Box::leak(format!("t_many_{i}").into_boxed_str()))
            .collect();
        for (i, word) in words.iter().enumerate() {
            for _ in 0..=i {
                HANDSHAKES_DROPPED.inc(["t_many", word]);
            }
        }
        for (i, word) in words.iter().enumerate() {
            assert_eq!(HANDSHAKES_DROPPED.get(["t_many", word]), i as u64 + 1);
        }
    }

    #[test]
    fn a_methods_cached_series_per_code_are_that_codes_series() {
        let layer = GrpcMetricsLayer::from_descriptor_sets(
            &[crate::proto::FILE_DESCRIPTOR_SET],
            "gws.sms.v1.SmsSessionService",
        );
        let m = layer
            .methods
            .get("/gws.sms.v1.SmsSessionService/Leave")
            .unwrap();
        let value = |code: &'static str| {
            let labels = GrpcCodeLabels {
                grpc_type: "unary",
                grpc_service: "gws.sms.v1.SmsSessionService".into(),
                grpc_method: "Leave".into(),
                grpc_code: code,
            };
            GRPC_HANDLED.get(&labels).map_or(0, |c| c.get())
        };
        let before = [value("OK"), value("NotFound")];
        m.handled(tonic::Code::Ok).inc();
        m.handled(tonic::Code::NotFound).inc();
        m.handled(tonic::Code::NotFound).inc();
        assert_eq!(value("OK"), before[0] + 1);
        assert_eq!(value("NotFound"), before[1] + 2);
        assert!(
            layer
                .methods
                .get("/gws.sms.v1.SmsSessionService/Nope")
                .is_none()
        );
        // Every method of the descriptor sets is found by its path.
        for (path, _) in layer.methods.0.iter() {
            assert!(layer.methods.get(path).is_some(), "{path}");
        }
    }

    #[test]
    fn framing_counts_messages_across_chunks() {
        let mut f = Framing::default();
        let msg = |len: u32| {
            let mut v = vec![0u8];
            v.extend(len.to_be_bytes());
            v.extend(std::iter::repeat_n(7u8, len as usize));
            v
        };
        let mut all = msg(3);
        all.extend(msg(0));
        all.extend(msg(10));
        assert_eq!(f.feed(&all[..2]), 0);
        assert_eq!(f.feed(&all[2..9]), 1);
        assert_eq!(f.feed(&all[9..20]), 1);
        assert_eq!(f.feed(&all[20..]), 1);
    }
}
