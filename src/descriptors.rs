//! The open-files budget. Every gRPC connection, pending handshake and upstream request holds
//! a file descriptor, and a process out of them fails in ways that look like something else
//! (a connect to GWS fails: "unreachable"; accept fails: clients time out). So at start the
//! soft `RLIMIT_NOFILE` is raised to the hard limit (as Go's runtime and nginx's
//! `worker_rlimit_nofile` do), and the limit in effect is split into shares that size the
//! defaults of the bounds that keep the gateway inside it: REST calls in flight, the event
//! feed's requests, pending handshakes, with the rest left for gRPC connections and the
//! process itself. Exhaustion that still happens (an operator's flags above the budget,
//! something else in the process) is recognised here from the `io::Error` under any error
//! chain, counted, and logged at WARN at most once per [`WARN_EVERY`] per place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Descriptors kept for the process itself: stdio, the runtime's epoll and wakers, the
/// listeners, signal pipes, the metrics and health endpoints' connections, the OTLP exporter.
const RESERVED: u64 = 64;
/// The smallest spare budget the shares are cut from, so a tiny limit still gives every
/// share at least a few slots (the gateway then simply serves little).
const MIN_SPARE: u64 = 16;
/// The fewest pending handshakes a listener allows: with fewer, two clients connecting
/// back to back could evict each other before their prefaces arrive.
const MIN_PENDING: usize = 8;
/// The most a listener allows by default: a real client's preface follows its connect within
/// a round trip, so more pending ones would only let a flood hold more descriptors (and
/// make the accept loop's bookkeeping longer).
const MAX_PENDING: usize = 1024;
/// At most one WARN line per place this often; the counter counts every occurrence.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// `EMFILE` and `ENFILE`: the same numbers on Linux, the BSDs and macOS.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// The open-files limit in effect and the shares cut from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft `RLIMIT_NOFILE` in effect.
    pub limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Self { limit }
    }

    /// What the shares are cut from: the limit minus what the process keeps for itself.
    fn spare(&self) -> u64 {
        self.limit.saturating_sub(RESERVED).max(MIN_SPARE)
    }

    fn share(&self, numerator: u64, denominator: u64) -> usize {
        let n = self.spare().saturating_mul(numerator) / denominator;
        usize::try_from(n.max(1)).unwrap_or(usize::MAX)
    }

    /// Default of `--upstream-max-in-flight`: half the spare budget. Each REST call in
    /// flight holds one upstream connection (GWS speaks HTTP/1.1), and idle pooled ones
    /// are reused before a new one is opened, so this bounds the REST side's descriptors.
    pub fn upstream_rest(&self) -> usize {
        self.share(1, 2)
    }

    /// Default of `--feed-max-in-flight`: an eighth. One CometD request (a parked long-poll,
    /// a handshake) per agent with streams at a time.
    pub fn upstream_feed(&self) -> usize {
        self.share(1, 8)
    }

    /// Default of `--max-pending-handshakes` per listener: a sixteenth, at least 8 and at
    /// most 1,024. Connections that have not finished their TLS handshake or sent the HTTP/2
    /// preface yet.
    pub fn pending_handshakes(&self) -> usize {
        self.share(1, 16).clamp(MIN_PENDING, MAX_PENDING)
    }
}

/// What raising the limit at start found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit in effect now.
    pub limit: u64,
    /// The hard limit (the ceiling an unprivileged process can raise to).
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard one, exports the limit in effect as a gauge
/// and returns it. Where the limit cannot be read or raised, what is in effect is used (and
/// said at WARN).
pub fn raise() -> Raised {
    let (before, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit; assuming 1024");
            (1024, 1024)
        }
    };
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, soft = before, hard, "cannot raise the open-files limit");
            before
        }
    };
    crate::metrics::OPEN_FILES_LIMIT.set(i64::try_from(limit).unwrap_or(i64::MAX));
    Raised {
        before,
        limit,
        hard,
    }
}

/// Whether `error` is the process or the system running out of file descriptors.
pub fn is_exhaustion(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(EMFILE | ENFILE))
}

/// Whether anything in `error`'s source chain (itself included) is descriptor exhaustion.
/// reqwest wraps hyper's error, which wraps the connector's, which wraps the `io::Error`.
pub fn in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(is_exhaustion)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Where descriptors ran out: a bounded set, used as the counter's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Accepting on the gRPC listener.
    GrpcAccept,
    /// Accepting on the plaintext health listener.
    HealthAccept,
    /// Connecting to GWS for a REST call.
    Upstream,
    /// Connecting to GWS for the event feed (CometD).
    Feed,
}

impl Place {
    pub fn label(self) -> &'static str {
        match self {
            Place::GrpcAccept => "grpc_accept",
            Place::HealthAccept => "health_accept",
            Place::Upstream => "upstream",
            Place::Feed => "feed",
        }
    }

    /// What it means there, and what to do, for the WARN line.
    fn consequence(self) -> &'static str {
        match self {
            Place::GrpcAccept | Place::HealthAccept => {
                "new connections wait in the listen backlog; raise the open-files limit"
            }
            Place::Upstream => {
                "REST calls get RESOURCE_EXHAUSTED; lower --upstream-max-in-flight or raise \
                 the open-files limit"
            }
            Place::Feed => {
                "event feeds retry; lower --feed-max-in-flight or raise the open-files limit"
            }
        }
    }

    fn index(self) -> usize {
        match self {
            Place::GrpcAccept => 0,
            Place::HealthAccept => 1,
            Place::Upstream => 2,
            Place::Feed => 3,
        }
    }
}

/// Per place: when the last WARN was written (ms since [`origin`], 0 = never) and how many
/// occurrences it has not told yet.
static LAST_WARN: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static UNTOLD: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Records descriptor exhaustion at `place`: counted every time, a WARN at most once per
/// [`WARN_EVERY`] per place saying how many occurrences it covers (a flood of accept errors
/// must not become a flood of log lines).
pub fn exhausted(place: Place) {
    crate::metrics::DESCRIPTORS_EXHAUSTED.inc([place.label()]);
    let i = place.index();
    UNTOLD[i].fetch_add(1, Ordering::Relaxed);
    // +1 so that "0 = never" cannot be confused with a warning at the origin itself.
    let now = origin().elapsed().as_millis() as u64 + 1;
    let last = LAST_WARN[i].load(Ordering::Relaxed);
    let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
    if due
        && LAST_WARN[i]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let occurrences = UNTOLD[i].swap(0, Ordering::Relaxed);
        let limit = crate::metrics::OPEN_FILES_LIMIT.get();
        tracing::warn!(
            place = place.label(),
            occurrences,
            open_files_limit = limit,
            "out of file descriptors: {}",
            place.consequence()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_cut_from_what_the_process_does_not_keep() {
        let b = Budget::new(1024);
        assert_eq!(b.spare(), 960);
        assert_eq!(
            (b.upstream_rest(), b.upstream_feed(), b.pending_handshakes()),
            (480, 120, 60)
        );
        let used = b.upstream_rest() + b.upstream_feed() + b.pending_handshakes();
        assert!(
            (used as u64) + RESERVED < b.limit,
            "room left for gRPC connections"
        );
        // A tiny limit still gives every share something; a huge one does not overflow.
        let tiny = Budget::new(20);
        assert!(tiny.upstream_rest() >= 1);
        assert_eq!(tiny.pending_handshakes(), MIN_PENDING);
        assert!(Budget::new(u64::MAX).upstream_rest() > 1_000_000);
        assert_eq!(Budget::new(1 << 20).pending_handshakes(), MAX_PENDING);
    }

    #[test]
    fn exhaustion_is_found_under_any_error_chain() {
        let emfile = std::io::Error::from_raw_os_error(EMFILE);
        assert!(is_exhaustion(&emfile));
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(ENFILE)));
        assert!(!is_exhaustion(&std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )));

        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapped(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Wrapped);
        assert!(in_chain(&Outer(Wrapped(emfile))));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!in_chain(&Outer(Wrapped(refused))));
    }

    #[test]
    fn exhaustion_is_counted_every_time() {
        let before = crate::metrics::DESCRIPTORS_EXHAUSTED.get(["feed"]);
        for _ in 0..3 {
            exhausted(Place::Feed);
        }
        assert_eq!(
            crate::metrics::DESCRIPTORS_EXHAUSTED.get(["feed"]),
            before + 3
        );
    }
}
