//! What can go wrong talking to GWS. Variants carry only what a caller may see: no
//! credentials and no raw library error strings. `grpc::status` turns them into gRPC
//! statuses, in one place.

/// An upstream failure, classified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    /// GWS answered with a non-zero `statusCode` in its JSON body.
    #[error("GWS statusCode {status_code}: {status_message} (HTTP {http_status})")]
    Gws {
        status_code: i64,
        status_message: String,
        http_status: u16,
    },
    /// A non-success HTTP status without a GWS body (HTML error page, empty body, ...).
    #[error("GWS answered HTTP {http_status} without a GWS status body: {excerpt}")]
    Http { http_status: u16, excerpt: String },
    /// A success HTTP status whose body is not the JSON GWS sends.
    #[error("GWS answered HTTP {http_status} with a body that is not GWS JSON: {excerpt}")]
    BadBody { http_status: u16, excerpt: String },
    /// A GWS reply with `statusCode` 0 whose data cannot be mapped to the proto.
    #[error("GWS answered with data the gateway cannot map: {0}")]
    Unmappable(String),
    /// The caller's deadline or the configured upstream timeout passed before an operation
    /// was sent (or during a read): nothing was applied.
    #[error("GWS did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The deadline passed after the operation was sent: GWS may have applied it.
    #[error("GWS did not answer within {0:?}; the operation was sent and may have been applied")]
    TimeoutAfterSend(std::time::Duration),
    /// Too little of the deadline was left to make a request at all; none was made.
    #[error("only {0:?} of the deadline was left; no request was sent to GWS")]
    DeadlineTooShort(std::time::Duration),
    /// Connection refused, reset, DNS failure, TLS failure: GWS could not be reached.
    #[error("GWS is unreachable: {0}")]
    Unreachable(Transport),
    /// The connection broke after the operation was sent: GWS may have applied it.
    #[error("GWS connection broke after the operation was sent ({0}); it may have been applied")]
    UnreachableAfterSend(Transport),
    /// Every one of the gateway's `--upstream-max-in-flight` slots stayed taken for as long
    /// as the gateway lets a call wait (`--upstream-timeout`): nothing was sent.
    #[error(
        "the gateway's limit of {limit} GWS requests in flight was reached and no slot freed \
         within {waited:?}; nothing was sent to GWS"
    )]
    NoSlot {
        limit: usize,
        waited: std::time::Duration,
    },
    /// As [`NoSlot`](Self::NoSlot), but it was the caller's deadline that passed while
    /// waiting: nothing was sent.
    #[error(
        "the caller's deadline passed after {waited:?} waiting for one of the gateway's {limit} \
         GWS request slots; nothing was sent to GWS"
    )]
    NoSlotBeforeDeadline {
        limit: usize,
        waited: std::time::Duration,
    },
    /// A first-time credential check found all of the gateway's `--new-agent-concurrency`
    /// check turns taken until the call's time ran out (`callers_deadline`: it was the
    /// caller's deadline): nothing was sent, and the credential is neither known nor refused.
    #[error(
        "the gateway's limit of {limit} concurrent first-time credential checks was reached \
         and no turn freed within {waited:?}; nothing was sent to GWS"
    )]
    NoCheckTurn {
        limit: usize,
        waited: std::time::Duration,
        callers_deadline: bool,
    },
    /// The gateway ran out of file descriptors opening a connection to GWS: GWS was never
    /// reached (so nothing was sent), and says nothing about whether GWS is up.
    #[error("the gateway is out of file descriptors; no connection to GWS could be opened")]
    OutOfDescriptors,
    /// The gateway holds as many agents' states as it is allowed to, all in use.
    #[error("too many agents are active on this gateway")]
    TooManyAgents,
    /// First-time credential checks arrive faster than `--new-agent-rate` allows; nothing
    /// was sent upstream.
    #[error("too many new agents at once; retry in {retry_after:?}")]
    RateLimited { retry_after: std::time::Duration },
}

/// What failed on the wire, classified once from a reqwest error for REST calls and the
/// CometD feed alike. Never the error's text: it can hold URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Transport {
    /// No connection was made (refused, DNS, TLS handshake, connect timeout): nothing was
    /// sent.
    #[error("connection failed")]
    Connect,
    /// The exchange outlasted its timeout.
    #[error("timed out")]
    Timeout,
    /// The request could not be sent whole, or the connection broke before a reply.
    #[error("request failed")]
    Request,
    /// The reply's body broke off or could not be decoded.
    #[error("connection broke while reading the reply")]
    Body,
    /// The gateway had no file descriptor left to open a connection: nothing was sent.
    #[error("the gateway is out of file descriptors")]
    OutOfDescriptors,
    /// The gateway's own limit of requests in flight held the request back: nothing was
    /// sent. (REST calls report this as [`UpstreamError::NoSlot`]; the feed, as this.)
    #[error("the gateway's limit of requests in flight was reached")]
    InFlightLimit,
    /// Anything else reqwest reports (or a request that could not be built).
    #[error("transport error")]
    Other,
}

impl UpstreamError {
    /// Its `outcome` label in `gws_gateway_upstream_requests_total`.
    pub fn label(&self) -> crate::metrics::UpstreamOutcome {
        use crate::metrics::UpstreamOutcome as O;
        match self {
            // statusCode is GWS's small documented set; anything else is one bucket.
            Self::Gws { status_code, .. } => match u16::try_from(*status_code) {
                Ok(code @ 0..=99) => O::numbered("gws_status", code),
                _ => O::word("gws_status_other"),
            },
            Self::Http { http_status, .. } => O::numbered("http", *http_status),
            Self::BadBody { .. } | Self::Unmappable(_) => O::word("bad_body"),
            Self::Timeout(_) | Self::TimeoutAfterSend(_) => O::word("timeout"),
            Self::DeadlineTooShort(_) => O::word("deadline_too_short"),
            Self::NoSlot { .. } | Self::NoSlotBeforeDeadline { .. } => O::word("no_slot"),
            Self::NoCheckTurn { .. } => O::word("no_check_turn"),
            Self::OutOfDescriptors => O::word("descriptors_exhausted"),
            Self::Unreachable(_)
            | Self::UnreachableAfterSend(_)
            | Self::TooManyAgents
            | Self::RateLimited { .. } => O::word("transport"),
        }
    }
}

impl Transport {
    pub fn of(err: &reqwest::Error) -> Self {
        if crate::descriptors::in_chain(err) {
            Self::OutOfDescriptors
        } else if err.is_connect() {
            // Before the timeout test: a connect timeout is still "nothing was sent".
            Self::Connect
        } else if err.is_timeout() {
            Self::Timeout
        } else if err.is_body() || err.is_decode() {
            Self::Body
        } else if err.is_request() {
            Self::Request
        } else {
            Self::Other
        }
    }

    /// Whether this failure proves the request never reached GWS.
    pub fn nothing_sent(self) -> bool {
        matches!(
            self,
            Self::Connect | Self::OutOfDescriptors | Self::InFlightLimit
        )
    }
}

impl UpstreamError {
    /// Whether an operation that ended with this error certainly was not applied: GWS refused
    /// it, or it was never sent. (Anything else may hide an applied operation, including an
    /// accepted one whose reply could not be read.)
    pub fn not_applied(&self) -> bool {
        match self {
            Self::Gws { .. }
            | Self::Timeout(_)
            | Self::DeadlineTooShort(_)
            | Self::Unreachable(_)
            | Self::NoSlot { .. }
            | Self::NoSlotBeforeDeadline { .. }
            | Self::NoCheckTurn { .. }
            | Self::OutOfDescriptors
            | Self::TooManyAgents
            | Self::RateLimited { .. } => true,
            Self::Http { .. }
            | Self::BadBody { .. }
            | Self::Unmappable(_)
            | Self::TimeoutAfterSend(_)
            | Self::UnreachableAfterSend(_) => false,
        }
    }

    /// Whether the gateway itself stopped the request before it left: GWS saw nothing.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            Self::NoSlot { .. }
                | Self::NoSlotBeforeDeadline { .. }
                | Self::NoCheckTurn { .. }
                | Self::OutOfDescriptors
                | Self::DeadlineTooShort(_)
                | Self::TooManyAgents
                | Self::RateLimited { .. }
        )
    }

    /// Relabels a call that never got a slot because the caller's own deadline passed (the
    /// upstream client only sees a time budget; the gRPC edge knows whose it was).
    pub fn deadline_was_the_callers(self) -> Self {
        match self {
            Self::NoSlot { limit, waited } => Self::NoSlotBeforeDeadline { limit, waited },
            Self::NoCheckTurn { limit, waited, .. } => Self::NoCheckTurn {
                limit,
                waited,
                callers_deadline: true,
            },
            other => other,
        }
    }

    /// Classifies a reqwest error without exposing its text (which can contain URLs).
    pub fn from_reqwest(err: &reqwest::Error, timeout: std::time::Duration) -> Self {
        match Transport::of(err) {
            // The gateway's own shortage, not GWS's state: it must never read as "unreachable".
            Transport::OutOfDescriptors => {
                crate::descriptors::exhausted(crate::descriptors::Place::Upstream);
                Self::OutOfDescriptors
            }
            Transport::Timeout => Self::Timeout(timeout),
            other => Self::Unreachable(other),
        }
    }
}

/// A short, printable excerpt of a body, for error messages: at most `max` characters,
/// control characters replaced, so HTML pages and binary garbage stay readable and bounded.
pub fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure_that_sent_nothing() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/api/v2/me"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(Transport::of(&err), Transport::Connect);
        assert!(Transport::of(&err).nothing_sent());
        let classified = UpstreamError::from_reqwest(&err, std::time::Duration::from_secs(1));
        assert_eq!(classified, UpstreamError::Unreachable(Transport::Connect));
        assert_eq!(
            classified.to_string(),
            "GWS is unreachable: connection failed"
        );
        for sent in [
            Transport::Timeout,
            Transport::Request,
            Transport::Body,
            Transport::Other,
        ] {
            assert!(!sent.nothing_sent(), "{sent:?}");
        }
    }

    #[test]
    fn excerpt_is_bounded_and_printable() {
        let long = "<html>\n<body>".to_string() + &"x".repeat(500);
        let e = excerpt(long.as_bytes(), 40);
        assert!(e.chars().count() <= 41);
        assert!(!e.contains('\n'));
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(&[0xff, 0xfe, b'a'], 10), "��a");
    }

    /// The `outcome` words of `gws_gateway_upstream_requests_total`, as dashboards read them.
    #[test]
    fn each_error_has_its_outcome_label() {
        use crate::metrics::UpstreamOutcome as O;
        let d = std::time::Duration::from_secs(1);
        let gws = |status_code| UpstreamError::Gws {
            status_code,
            status_message: String::new(),
            http_status: 400,
        };
        let cases = [
            (gws(0), O::numbered("gws_status", 0)),
            (gws(6), O::numbered("gws_status", 6)),
            (gws(99), O::numbered("gws_status", 99)),
            (gws(100), O::word("gws_status_other")),
            (gws(-1), O::word("gws_status_other")),
            (
                UpstreamError::Http {
                    http_status: 503,
                    excerpt: String::new(),
                },
                O::numbered("http", 503),
            ),
            (
                UpstreamError::BadBody {
                    http_status: 200,
                    excerpt: String::new(),
                },
                O::word("bad_body"),
            ),
            (
                UpstreamError::Unmappable(String::new()),
                O::word("bad_body"),
            ),
            (UpstreamError::Timeout(d), O::word("timeout")),
            (UpstreamError::TimeoutAfterSend(d), O::word("timeout")),
            (
                UpstreamError::DeadlineTooShort(d),
                O::word("deadline_too_short"),
            ),
            (
                UpstreamError::NoSlot {
                    limit: 1,
                    waited: d,
                },
                O::word("no_slot"),
            ),
            (
                UpstreamError::NoSlotBeforeDeadline {
                    limit: 1,
                    waited: d,
                },
                O::word("no_slot"),
            ),
            (
                UpstreamError::OutOfDescriptors,
                O::word("descriptors_exhausted"),
            ),
            (
                UpstreamError::Unreachable(Transport::Connect),
                O::word("transport"),
            ),
            (
                UpstreamError::UnreachableAfterSend(Transport::Body),
                O::word("transport"),
            ),
        ];
        for (error, label) in cases {
            assert_eq!(error.label(), label, "{error:?}");
        }
    }
}
