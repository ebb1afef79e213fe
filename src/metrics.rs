//! Prometheus metrics: a small process-wide registry (counters, gauges and histograms over
//! atomics and short mutex sections, rendered in the text exposition format), the one tower
//! layer that observes every RPC to its final status (streams included: a stream's code is
//! known when its response body ends, so the body is wrapped), and `GET /metrics` served by
//! axum on its own address. The gRPC series carry go-grpc-prometheus's names and labels so
//! existing dashboards work; the gateway's own series start with `gws_gateway_`.
//!
//! The registry is a process-wide static, as Prometheus clients' default registries are: the
//! places that count (upstream calls, the CometD feed) then need one line each, and no handle
//! threaded through constructors. Every label value comes from a bounded set.

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Histogram buckets in seconds: Prometheus's defaults, which go-grpc-prometheus uses.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One metric's series, by label values. Counting finds a series by the values the caller
/// passes and allocates only when it creates one (building owned keys for each lookup was a
/// dozen allocations per call). Each value is shared, so a hot path (the gRPC layer) keeps
/// handles to its series and counts without any lookup.
struct Series<V>(hashbrown::HashTable<(Vec<String>, Arc<V>)>);

impl<V> Series<V> {
    const fn new() -> Self {
        Self(hashbrown::HashTable::new())
    }

    fn get(&self, labels: &[&str]) -> Option<&Arc<V>> {
        let found = self
            .0
            .find(label_hash(labels), |(key, _)| same(key, labels));
        found.map(|(_, value)| value)
    }

    /// The series for `labels`, created (zero) on first use.
    fn get_or_insert(&mut self, labels: &[&str]) -> &Arc<V>
    where
        V: Default,
    {
        let hash = label_hash(labels);
        let entry = self.0.entry(
            hash,
            |(key, _)| same(key, labels),
            |(key, _)| label_hash(key),
        );
        let (_, value) = match entry {
            hashbrown::hash_table::Entry::Occupied(found) => found.into_mut(),
            hashbrown::hash_table::Entry::Vacant(empty) => {
                let key = labels.iter().map(|l| l.to_string()).collect();
                empty.insert((key, Arc::default())).into_mut()
            }
        };
        value
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The series in label order, for stable output.
    fn sorted(&self) -> Vec<&(Vec<String>, Arc<V>)> {
        let mut all: Vec<_> = self.0.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

fn same(key: &[String], labels: &[&str]) -> bool {
    key.len() == labels.len() && key.iter().zip(labels).all(|(k, l)| k == l)
}

/// An FxHash-style hash of the values, eight bytes at a time, each value ended by 0xff
/// (which UTF-8 never contains). Label values are a few short strings from bounded sets the
/// gateway chose, so nobody can aim collisions at a series table. The method table is also
/// looked up by the caller's request path, but it is small and fixed (a lookup never adds
/// to it), so a colliding path costs a few string comparisons at most. std's SipHash cost
/// more than the rest of counting a call.
fn label_hash<S: AsRef<str>>(labels: &[S]) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mix = |hash: u64, word: u64| (hash.rotate_left(26) ^ word).wrapping_mul(K);
    let mut hash: u64 = 0;
    for label in labels {
        let mut chunks = label.as_ref().as_bytes().chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            hash = mix(hash, word);
        }
        let mut last = [0xff; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        hash = mix(hash, u64::from_le_bytes(last));
    }
    // The table picks buckets by the low bits, which a final multiply leaves depending on the
    // last word's low bytes only: bring the well-mixed high bits down (as rustc-hash does).
    hash.rotate_left(26)
}

/// A counter with labels.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<Series<AtomicU64>>,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            help,
            labels,
            values: Mutex::new(Series::new()),
        }
    }

    pub fn inc(&self, labels: &[&str]) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.get_or_insert(labels).fetch_add(1, Ordering::Relaxed);
    }

    /// The series for `labels` (created at zero), to count without finding it each time.
    pub fn handle(&self, labels: &[&str]) -> CounterHandle {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        CounterHandle(values.get_or_insert(labels).clone())
    }

    /// The current value for these labels (0 if never counted).
    pub fn get(&self, labels: &[&str]) -> u64 {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(labels)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }
}

/// One counter series, held by a hot path.
#[derive(Debug, Clone)]
pub struct CounterHandle(Arc<AtomicU64>);

impl CounterHandle {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// A gauge without labels.
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicI64,
}

impl Gauge {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicI64::new(0),
        }
    }

    pub fn add(&self, n: i64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }

    /// Adds one now and takes it back when the guard drops: the gauge cannot drift when the
    /// holder ends by any path (return, error, cancellation).
    pub fn hold(&'static self) -> GaugeGuard {
        self.add(1);
        GaugeGuard(self)
    }
}

pub struct GaugeGuard(&'static Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

#[derive(Default, Clone)]
struct HistogramData {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// A histogram of seconds with labels.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<Series<Mutex<HistogramData>>>,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            help,
            labels,
            values: Mutex::new(Series::new()),
        }
    }

    pub fn observe(&self, labels: &[&str], elapsed: Duration) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        record(values.get_or_insert(labels), elapsed);
    }

    /// The series for `labels` (created empty), to observe without finding it each time.
    pub fn handle(&self, labels: &[&str]) -> HistogramHandle {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        HistogramHandle(values.get_or_insert(labels).clone())
    }
}

/// One histogram series, held by a hot path. A series has its own lock (a scrape reads its
/// buckets, sum and count together): observing through a handle takes only that lock, not
/// the metric-wide one [`Histogram::observe`] takes to find the series.
#[derive(Clone)]
pub struct HistogramHandle(Arc<Mutex<HistogramData>>);

impl HistogramHandle {
    pub fn observe(&self, elapsed: Duration) {
        record(&self.0, elapsed);
    }
}

fn record(series: &Mutex<HistogramData>, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let mut data = series.lock().unwrap_or_else(|e| e.into_inner());
    for (bucket, bound) in data.buckets.iter_mut().zip(BUCKETS) {
        if seconds <= bound {
            *bucket += 1;
        }
    }
    data.sum += seconds;
    data.count += 1;
}

// --- the series -------------------------------------------------------------------------

const GRPC_LABELS: &[&str] = &["grpc_type", "grpc_service", "grpc_method"];

pub static GRPC_STARTED: Counter = Counter::new(
    "grpc_server_started_total",
    "Total number of RPCs started on the server.",
    GRPC_LABELS,
);
pub static GRPC_HANDLED: Counter = Counter::new(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
);
pub static GRPC_MSG_SENT: Counter = Counter::new(
    "grpc_server_msg_sent_total",
    "Total number of gRPC stream messages sent by the server.",
    GRPC_LABELS,
);
pub static GRPC_HANDLING: Histogram = Histogram::new(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
    GRPC_LABELS,
);
pub static UPSTREAM_REQUESTS: Counter = Counter::new(
    "gws_gateway_upstream_requests_total",
    "GWS REST requests by operation and outcome (ok, gws_status_<statusCode>, http_<status>, timeout, deadline_too_short (none sent), transport, bad_body).",
    &["operation", "outcome"],
);
pub static UPSTREAM_SECONDS: Histogram = Histogram::new(
    "gws_gateway_upstream_request_duration_seconds",
    "Latency of GWS REST requests (the whole exchange, CSRF round trips included).",
    &["operation"],
);
pub static AGENTS: Gauge = Gauge::new(
    "gws_gateway_agents",
    "Agents whose upstream state (cookies, CSRF token) the gateway holds.",
);
pub static COMETD_SESSIONS: Gauge = Gauge::new(
    "gws_gateway_cometd_sessions",
    "Live upstream CometD sessions (one per agent with streams or outcome waits).",
);
pub static COMETD_HANDSHAKES: Counter = Counter::new(
    "gws_gateway_cometd_handshakes_total",
    "Upstream CometD sessions subscribed: kind=initial for a new session, rehandshake after a lost one was restored.",
    &["kind"],
);
pub static NOTIFICATIONS: Counter = Counter::new(
    "gws_gateway_notifications_total",
    "Notifications received from GWS, by kind (notificationType, MessageLogUpdated, or other).",
    &["kind"],
);
pub static NOTIFICATIONS_UNMAPPED: Counter = Counter::new(
    "gws_gateway_notifications_unmapped_total",
    "Notifications that could not be mapped to the gRPC contract and were skipped.",
    &[],
);
pub static CLUSTER_STALE: Counter = Counter::new(
    "gws_gateway_cluster_stale_publishes_total",
    "Cluster mode: messages of an owner that had lost its lease, refused or dropped.",
    &[],
);
pub static STREAMS_OPEN: Gauge = Gauge::new(
    "gws_gateway_streams_open",
    "SessionEvents streams open now.",
);
pub static STREAMS_CUT: Counter = Counter::new(
    "gws_gateway_streams_cut_total",
    "SessionEvents streams ended by the gateway or the client, by reason (slow_consumer, unavailable, client_gone, or the status code).",
    &["reason"],
);
pub static REPLAY: Counter = Counter::new(
    "gws_gateway_replay_total",
    "Resume attempts: result=hit when replayed from the buffer, gap when the token was too old or foreign.",
    &["result"],
);
pub static OUTCOME_WAITS: Counter = Counter::new(
    "gws_gateway_outcome_waits_total",
    "wait_for_outcome calls by result (confirmed, unconfirmed, failed).",
    &["result"],
);

/// Renders every series in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    let mut out = String::new();
    for c in [&GRPC_STARTED, &GRPC_HANDLED, &GRPC_MSG_SENT] {
        render_counter(&mut out, c);
    }
    render_histogram(&mut out, &GRPC_HANDLING);
    render_counter(&mut out, &UPSTREAM_REQUESTS);
    render_histogram(&mut out, &UPSTREAM_SECONDS);
    render_gauge(&mut out, &AGENTS);
    render_gauge(&mut out, &COMETD_SESSIONS);
    render_counter(&mut out, &COMETD_HANDSHAKES);
    render_counter(&mut out, &NOTIFICATIONS);
    render_counter(&mut out, &NOTIFICATIONS_UNMAPPED);
    render_counter(&mut out, &CLUSTER_STALE);
    render_gauge(&mut out, &STREAMS_OPEN);
    render_counter(&mut out, &STREAMS_CUT);
    render_counter(&mut out, &REPLAY);
    render_counter(&mut out, &OUTCOME_WAITS);
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn label_set(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        pairs.push(format!("{n}=\"{v}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_counter(out: &mut String, c: &Counter) {
    header(out, c.name, c.help, "counter");
    let values = c.values.lock().unwrap_or_else(|e| e.into_inner());
    if values.is_empty() && c.labels.is_empty() {
        let _ = writeln!(out, "{} 0", c.name);
    }
    for (labels, value) in values.sorted() {
        let value = value.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{}{} {value}",
            c.name,
            label_set(c.labels, labels, None)
        );
    }
}

fn render_gauge(out: &mut String, g: &Gauge) {
    header(out, g.name, g.help, "gauge");
    let _ = writeln!(out, "{} {}", g.name, g.get());
}

fn render_histogram(out: &mut String, h: &Histogram) {
    header(out, h.name, h.help, "histogram");
    let values = h.values.lock().unwrap_or_else(|e| e.into_inner());
    for (labels, data) in values.sorted() {
        let data = data.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (bound, count) in BUCKETS.iter().zip(data.buckets) {
            let le = bound.to_string();
            let _ = writeln!(
                out,
                "{}_bucket{} {count}",
                h.name,
                label_set(h.labels, labels, Some(("le", &le)))
            );
        }
        let set = label_set(h.labels, labels, None);
        let inf = label_set(h.labels, labels, Some(("le", "+Inf")));
        let _ = writeln!(out, "{}_bucket{inf} {}", h.name, data.count);
        let _ = writeln!(out, "{}_sum{set} {}", h.name, data.sum);
        let _ = writeln!(out, "{}_count{set} {}", h.name, data.count);
    }
}

// --- recording helpers for the places that count ---------------------------------------

/// Records one GWS REST exchange: its outcome class and its latency.
pub fn upstream_request<T>(
    operation: &str,
    started: Instant,
    result: &Result<T, crate::upstream::UpstreamError>,
) {
    use crate::upstream::UpstreamError as E;
    // Named without allocating in the common cases: this runs for every upstream call.
    let outcome: std::borrow::Cow<'static, str> = match result {
        Ok(_) => "ok".into(),
        // statusCode is GWS's small documented set; anything else is one bucket.
        Err(E::Gws { status_code, .. }) if (0..=99).contains(status_code) => {
            format!("gws_status_{status_code}").into()
        }
        Err(E::Gws { .. }) => "gws_status_other".into(),
        Err(E::Http { http_status, .. }) => format!("http_{http_status}").into(),
        Err(E::BadBody { .. } | E::Unmappable(_)) => "bad_body".into(),
        Err(E::Timeout(_) | E::TimeoutAfterSend(_)) => "timeout".into(),
        Err(E::DeadlineTooShort(_)) => "deadline_too_short".into(),
        Err(_) => "transport".into(),
    };
    UPSTREAM_REQUESTS.inc(&[operation, &outcome]);
    UPSTREAM_SECONDS.observe(&[operation], started.elapsed());
}

/// Counts a received notification (CometD `data`) by its kind: `MessageLogUpdated` for
/// transcript updates, else its `notificationType`; unknown kinds are `other` (bounded).
pub fn notification(data: &serde_json::Value) {
    const KNOWN: &[&str] = &[
        "StatusChange",
        "ParticipantsUpdated",
        "PropertiesUpdated",
        "Error",
        "MessageLogUpdated",
    ];
    let field = |name: &str| data.get(name).and_then(serde_json::Value::as_str);
    let kind = match field("messageType") {
        Some("MessageLogUpdated") => "MessageLogUpdated",
        _ => field("notificationType").unwrap_or("other"),
    };
    let kind = KNOWN
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other");
    NOTIFICATIONS.inc(&[kind]);
}

/// Counts a finished `wait_for_outcome` wait by its result.
pub fn outcome_wait(outcome: &crate::events::Outcome) {
    use crate::events::Outcome;
    let result = match outcome {
        Outcome::Confirmed(_) => "confirmed",
        Outcome::Unconfirmed => "unconfirmed",
        Outcome::Failed(_) => "failed",
    };
    OUTCOME_WAITS.inc(&[result]);
}

// --- the tower layer --------------------------------------------------------------------

/// What the layer knows of a method: its labels, and its series once first counted (found
/// once, not by their labels on every call).
struct MethodSeries {
    service: Arc<str>,
    method: Arc<str>,
    kind: &'static str,
    /// A SessionEvents-like stream of the gateway's own service: counted in
    /// `gws_gateway_streams_*`.
    gateway_stream: bool,
    started: OnceLock<CounterHandle>,
    msg_sent: OnceLock<CounterHandle>,
    handling: OnceLock<HistogramHandle>,
    /// By code (`tonic::Code as usize`, 0..=16).
    handled: [OnceLock<CounterHandle>; 17],
}

impl MethodSeries {
    fn labels(&self) -> [&str; 3] {
        [self.kind, &self.service, &self.method]
    }

    fn started(&self) -> &CounterHandle {
        self.started
            .get_or_init(|| GRPC_STARTED.handle(&self.labels()))
    }

    fn msg_sent(&self) -> &CounterHandle {
        self.msg_sent
            .get_or_init(|| GRPC_MSG_SENT.handle(&self.labels()))
    }

    fn handling(&self) -> &HistogramHandle {
        self.handling
            .get_or_init(|| GRPC_HANDLING.handle(&self.labels()))
    }

    fn handled(&self, code: tonic::Code) -> &CounterHandle {
        // `code_label` matches every `tonic::Code` (0..=16, checked at compile time below),
        // so each code has its own slot.
        const _: () = assert!(tonic::Code::Unauthenticated as usize == 16);
        self.handled[code as usize].get_or_init(|| {
            let [kind, service, method] = self.labels();
            GRPC_HANDLED.handle(&[kind, service, method, code_label(code)])
        })
    }
}

/// Observes every RPC of the methods described by the given descriptor sets. Calls to paths
/// that name no known method are not counted: an attacker-chosen path must not create series.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    methods: Arc<Methods>,
}

/// The known methods by path (`/package.Service/Method`).
struct Methods(hashbrown::HashTable<(String, Arc<MethodSeries>)>);

impl Methods {
    fn get(&self, path: &str) -> Option<&Arc<MethodSeries>> {
        let found = self.0.find(label_hash(&[path]), |(p, _)| p == path);
        found.map(|(_, labels)| labels)
    }
}

impl GrpcMetricsLayer {
    /// `gateway_service` names the service whose server streams are the gateway's streams.
    pub fn from_descriptor_sets(sets: &[&[u8]], gateway_service: &str) -> Self {
        use prost::Message;
        let mut methods = hashbrown::HashTable::new();
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
                    let service_name: Arc<str> = full.as_str().into();
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        let path = format!("/{full}/{}", method.name());
                        let labels = MethodSeries {
                            service: service_name.clone(),
                            method: method.name().into(),
                            kind,
                            gateway_stream: kind == "server_stream" && full == gateway_service,
                            started: OnceLock::new(),
                            msg_sent: OnceLock::new(),
                            handling: OnceLock::new(),
                            handled: std::array::from_fn(|_| OnceLock::new()),
                        };
                        let hash = label_hash(&[&path]);
                        match methods.entry(hash, |(p, _)| *p == path, |(p, _)| label_hash(&[p])) {
                            hashbrown::hash_table::Entry::Occupied(mut found) => {
                                found.get_mut().1 = Arc::new(labels);
                            }
                            hashbrown::hash_table::Entry::Vacant(empty) => {
                                empty.insert((path, Arc::new(labels)));
                            }
                        }
                    }
                }
            }
        }
        Self {
            methods: Arc::new(Methods(methods)),
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
                _stream_open: labels.gateway_stream.then(|| STREAMS_OPEN.hold()),
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
        l.handling().observe(self.started.elapsed());
        if l.gateway_stream && code != tonic::Code::Ok {
            let reason = match code {
                tonic::Code::ResourceExhausted => "slow_consumer",
                tonic::Code::Unavailable => "unavailable",
                tonic::Code::Cancelled => "client_gone",
                _ => code_label(code),
            };
            STREAMS_CUT.inc(&[reason]);
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
                            call.labels.msg_sent().add(sent);
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
                    "text/plain; version=0.0.4; charset=utf-8",
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

    #[test]
    fn series_are_told_apart_by_every_value() {
        static C: Counter = Counter::new("t_apart_total", "help", &["a", "b"]);
        let sets: [&[&str]; 6] = [
            &["ab", "c"],
            &["a", "bc"],
            &["", "abc"],
            &["unary", "gws.sms.v1.SmsSessionService"],
            &["unary", "gws.sms.v1.SmsSessionServicf"],
            &["12345678", "12345678"],
        ];
        for (n, labels) in sets.iter().enumerate() {
            for _ in 0..=n {
                C.inc(labels);
            }
        }
        for (n, labels) in sets.iter().enumerate() {
            assert_eq!(C.get(labels), n as u64 + 1, "{labels:?}");
        }
        assert_eq!(C.get(&["abc", ""]), 0);
        let mut out = String::new();
        render_counter(&mut out, &C);
        assert!(
            out.find("a=\"\",b=\"abc\"").unwrap() < out.find("a=\"a\",b=\"bc\"").unwrap(),
            "rendered in label order: {out}"
        );
    }

    #[test]
    fn handles_count_in_the_series_their_labels_name() {
        static C: Counter = Counter::new("t_handle_total", "help", &["a"]);
        static H: Histogram = Histogram::new("t_handle_seconds", "help", &["a"]);
        C.inc(&["x"]);
        let x = C.handle(&["x"]);
        x.inc();
        x.add(2);
        C.handle(&["y"]).inc();
        assert_eq!((C.get(&["x"]), C.get(&["y"])), (4, 1));
        H.observe(&["x"], Duration::from_millis(2));
        H.handle(&["x"]).observe(Duration::from_secs(3));
        let mut out = String::new();
        render_histogram(&mut out, &H);
        assert!(
            out.contains("t_handle_seconds_bucket{a=\"x\",le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_handle_seconds_bucket{a=\"x\",le=\"5\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("t_handle_seconds_count{a=\"x\"} 2\n"), "{out}");

        // A method's cached series per code are the series of that code's label.
        let layer = GrpcMetricsLayer::from_descriptor_sets(
            &[crate::proto::FILE_DESCRIPTOR_SET],
            "gws.sms.v1.SmsSessionService",
        );
        let m = layer
            .methods
            .get("/gws.sms.v1.SmsSessionService/Leave")
            .unwrap();
        let labels = |code| ["unary", "gws.sms.v1.SmsSessionService", "Leave", code];
        let before = [
            GRPC_HANDLED.get(&labels("OK")),
            GRPC_HANDLED.get(&labels("NotFound")),
        ];
        m.handled(tonic::Code::Ok).inc();
        m.handled(tonic::Code::NotFound).inc();
        m.handled(tonic::Code::NotFound).inc();
        assert_eq!(GRPC_HANDLED.get(&labels("OK")), before[0] + 1);
        assert_eq!(GRPC_HANDLED.get(&labels("NotFound")), before[1] + 2);
        assert!(
            layer
                .methods
                .get("/gws.sms.v1.SmsSessionService/Nope")
                .is_none()
        );
    }

    #[test]
    fn renders_text_format() {
        static C: Counter = Counter::new("t_total", "help", &["a"]);
        static H: Histogram = Histogram::new("t_seconds", "help", &["a"]);
        C.inc(&["x\"y"]);
        H.observe(&["x"], Duration::from_millis(20));
        let mut out = String::new();
        render_counter(&mut out, &C);
        render_histogram(&mut out, &H);
        assert!(out.contains("# TYPE t_total counter\nt_total{a=\"x\\\"y\"} 1\n"));
        assert!(out.contains("t_seconds_bucket{a=\"x\",le=\"0.01\"} 0\n"));
        assert!(out.contains("t_seconds_bucket{a=\"x\",le=\"0.025\"} 1\n"));
        assert!(out.contains("t_seconds_bucket{a=\"x\",le=\"+Inf\"} 1\n"));
        assert!(out.contains("t_seconds_count{a=\"x\"} 1\n"));
    }
}
