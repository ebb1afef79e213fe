//! The one place where errors become gRPC statuses (`api.md`, "Errors"). Every row of the
//! mapping table has a unit test below: a mapping that silently collapses classes (say,
//! every failure into "timed out") is the kind of bug only such tests catch.

use super::validate::FieldViolation;
use crate::events::{EventsError, Unchecked};
use crate::upstream::{CredentialError, UpstreamError};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Everything that can end a call of the gateway's service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("{error}")]
    Upstream {
        error: UpstreamError,
        domain: String,
    },
    /// GWS accepted the operation, then reported with an `Error` notification that it failed.
    #[error("GWS reported the operation failed: {message}")]
    OperationFailed {
        message: String,
        reference_id: Option<i64>,
        domain: String,
    },
    /// A SessionEvents stream could not start or had to end.
    #[error("{error}")]
    Events { error: EventsError, domain: String },
}

impl Error {
    pub fn upstream(error: UpstreamError, domain: &str) -> Self {
        Self::Upstream {
            error,
            domain: domain.to_string(),
        }
    }

    pub fn events(error: EventsError, domain: &str) -> Self {
        Self::Events {
            error,
            domain: domain.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        to_status(&err)
    }
}

/// The GWS `statusCode` -> gRPC code table; `http_status` decides only where the table says so.
pub fn gws_code(status_code: i64, http_status: u16) -> Code {
    match status_code {
        1 | 10 => Code::InvalidArgument,
        2 | 11 | 19 => Code::FailedPrecondition,
        3 | 5 => Code::PermissionDenied,
        6 => Code::NotFound,
        // 8 "password change required": the account must be fixed before anything works.
        8 => Code::FailedPrecondition,
        18 => Code::AlreadyExists,
        20 => Code::Unauthenticated,
        4 | 12..=17 if http_status == 503 => Code::Unavailable,
        4 | 12..=17 => Code::Internal,
        9 => Code::Unavailable,
        // 7 "partial success" and codes GWS may add later: say so rather than guess.
        _ => Code::Unknown,
    }
}

pub fn to_status(err: &Error) -> Status {
    match err {
        Error::InvalidArgument(violations) => {
            let mut details = ErrorDetails::new();
            for v in violations {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            let summary = violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ");
            Status::with_error_details(
                Code::InvalidArgument,
                format!("invalid request: {summary}"),
                details,
            )
        }
        Error::Credential(e) => Status::unauthenticated(e.to_string()),
        Error::OperationFailed {
            message,
            reference_id,
            domain,
        } => {
            let mut metadata = HashMap::from([("error_message".to_string(), message.clone())]);
            if let Some(r) = reference_id {
                metadata.insert("reference_id".into(), r.to_string());
            }
            Status::with_error_details(
                Code::Aborted,
                format!("GWS accepted the operation, then reported it failed: {message}"),
                ErrorDetails::with_error_info("GWS_OPERATION_FAILED", domain, metadata),
            )
        }
        Error::Upstream { error, domain } => upstream_status(error, domain),
        Error::Events { error, domain } => events_status(error, domain),
    }
}

fn events_status(error: &EventsError, domain: &str) -> Status {
    match error {
        EventsError::SlowConsumer {
            last_resume_token,
            resumable: true,
        } => Status::resource_exhausted(format!(
            "stream consumer too slow: its buffer filled and the stream was ended; \
             reconnect with resume_token \"{last_resume_token}\" within {} s to resume \
             without loss (the gateway holds the events after it until then, unless its replay \
             byte limits are reached first; a resume then starts with a GAP notice)",
            crate::events::RESUME_WINDOW.as_secs()
        )),
        EventsError::SlowConsumer {
            last_resume_token,
            resumable: false,
        } => Status::resource_exhausted(format!(
            "stream consumer too slow: its buffer filled and the stream was ended; events \
             after resume_token \"{last_resume_token}\" are no longer held (replay byte or \
             age limit), so resuming from it starts with a GAP notice"
        )),
        EventsError::ShuttingDown => {
            Status::unavailable("gateway is shutting down; reconnect to another instance or retry")
        }
        EventsError::Ended(why) => {
            Status::unavailable(format!("upstream notifications ended: {why}"))
        }
        EventsError::NotReady(wait) => Status::unavailable(format!(
            "upstream notifications could not be established within {} ms",
            wait.as_millis()
        )),
        EventsError::Upstream(e) => upstream_status(e, domain),
        EventsError::TooManySubscribers(max) => Status::resource_exhausted(format!(
            "too many SessionEvents streams for this agent (at most {max}, \
             --max-streams-per-agent); close one or share a stream"
        )),
        EventsError::TooManyWaits(max) => Status::resource_exhausted(format!(
            "too many calls of this agent are waiting for their outcome (at most {max}); \
             retry later or call without wait_for_outcome"
        )),
        // Not a GAP: nothing says the token was never issued, only that this replica
        // cannot tell now. The caller keeps its token and goes elsewhere or waits.
        EventsError::ResumeUnchecked { token, why } => {
            let (reason, what) = match why {
                Unchecked::LinkDown => (
                    "CLUSTER_LINK_DOWN",
                    "this gateway replica's NATS connection is down".to_string(),
                ),
                Unchecked::NoAnswer(e) => (
                    "CLUSTER_NO_ANSWER",
                    format!("NATS did not answer this gateway replica ({e})"),
                ),
            };
            Status::with_error_details(
                Code::Unavailable,
                format!(
                    "resume_token \"{token}\" cannot be checked: it is ahead of what this \
                     replica has read of the event stream and {what}; the token stays valid: \
                     retry with it here or on another replica"
                ),
                ErrorDetails::with_error_info(
                    reason,
                    domain,
                    HashMap::from([("resume_token".to_string(), token.clone())]),
                ),
            )
        }
    }
}

fn upstream_status(error: &UpstreamError, domain: &str) -> Status {
    let info = |reason: String, meta: &[(&str, String)]| {
        let metadata: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        ErrorDetails::with_error_info(reason, domain, metadata)
    };
    match error {
        UpstreamError::Gws {
            status_code,
            status_message,
            http_status,
        } => {
            let code = gws_code(*status_code, *http_status);
            let message = if status_message.is_empty() {
                format!("GWS statusCode {status_code} (HTTP {http_status})")
            } else {
                format!("GWS statusCode {status_code}: {status_message} (HTTP {http_status})")
            };
            Status::with_error_details(
                code,
                message,
                info(
                    format!("GWS_STATUS_{status_code}"),
                    &[
                        ("status_code", status_code.to_string()),
                        ("status_message", status_message.clone()),
                        ("http_status", http_status.to_string()),
                    ],
                ),
            )
        }
        UpstreamError::Http {
            http_status: 401, ..
        } => Status::with_error_details(
            Code::Unauthenticated,
            "GWS refused the credentials (HTTP 401)",
            info("GWS_HTTP_401".into(), &[("http_status", "401".into())]),
        ),
        UpstreamError::Http {
            http_status,
            excerpt,
        }
        | UpstreamError::BadBody {
            http_status,
            excerpt,
        } => Status::with_error_details(
            Code::Unavailable,
            format!("GWS answered HTTP {http_status} without a GWS status body: {excerpt:?}"),
            info(
                format!("GWS_HTTP_{http_status}"),
                &[("http_status", http_status.to_string())],
            ),
        ),
        UpstreamError::Unmappable(why) => Status::with_error_details(
            Code::Unavailable,
            format!("GWS answered with data the gateway cannot map: {why}"),
            info("GWS_BAD_REPLY".into(), &[]),
        ),
        // Whether the operation may have been applied decides what a caller does next (retry
        // freely, or read the session first): say it in every DEADLINE_EXCEEDED.
        UpstreamError::Timeout(after) => Status::with_error_details(
            Code::DeadlineExceeded,
            format!(
                "GWS did not answer within {} ms; nothing was applied",
                after.as_millis()
            ),
            info(
                "UPSTREAM_TIMEOUT".into(),
                &[("may_have_been_applied", "false".into())],
            ),
        ),
        UpstreamError::TimeoutAfterSend(after) => Status::with_error_details(
            Code::DeadlineExceeded,
            format!(
                "GWS did not answer within {} ms; the operation was sent and may have been \
                 applied: read the session before retrying",
                after.as_millis()
            ),
            info(
                "UPSTREAM_TIMEOUT".into(),
                &[("may_have_been_applied", "true".into())],
            ),
        ),
        UpstreamError::DeadlineTooShort(left) => Status::with_error_details(
            Code::DeadlineExceeded,
            format!(
                "only {} ms of the deadline were left (at least {} ms are needed); no request \
                 was sent to GWS",
                left.as_millis(),
                crate::upstream::MIN_UPSTREAM_BUDGET.as_millis()
            ),
            info(
                "DEADLINE_TOO_SHORT".into(),
                &[("may_have_been_applied", "false".into())],
            ),
        ),
        UpstreamError::Unreachable(why) => Status::with_error_details(
            Code::Unavailable,
            format!("GWS is unreachable: {why}"),
            info("UPSTREAM_UNREACHABLE".into(), &[]),
        ),
        UpstreamError::UnreachableAfterSend(why) => Status::with_error_details(
            Code::Unavailable,
            format!(
                "GWS connection broke after the operation was sent ({why}); it may have been \
                 applied: read the session before retrying"
            ),
            info(
                "UPSTREAM_UNREACHABLE".into(),
                &[("may_have_been_applied", "true".into())],
            ),
        ),
        // The gateway's own limits: nothing was sent, so retrying is always safe.
        UpstreamError::NoSlot { limit, waited } => Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "the gateway's limit of {limit} GWS requests in flight was reached and no slot \
                 freed within {} ms (--upstream-timeout); nothing was sent to GWS: retry later",
                waited.as_millis()
            ),
            info(
                "UPSTREAM_IN_FLIGHT_LIMIT".into(),
                &[
                    ("may_have_been_applied", "false".into()),
                    ("max_in_flight", limit.to_string()),
                ],
            ),
        ),
        UpstreamError::NoSlotBeforeDeadline { limit, waited } => Status::with_error_details(
            Code::DeadlineExceeded,
            format!(
                "the deadline passed after {} ms waiting for one of the gateway's {limit} GWS \
                 request slots; nothing was sent to GWS",
                waited.as_millis()
            ),
            info(
                "UPSTREAM_IN_FLIGHT_LIMIT".into(),
                &[
                    ("may_have_been_applied", "false".into()),
                    ("max_in_flight", limit.to_string()),
                ],
            ),
        ),
        UpstreamError::NoCheckTurn {
            limit,
            waited,
            callers_deadline,
        } => Status::with_error_details(
            if *callers_deadline {
                Code::DeadlineExceeded
            } else {
                Code::ResourceExhausted
            },
            format!(
                "the gateway's limit of {limit} concurrent first-time credential checks \
                 (--new-agent-concurrency) was reached and no turn freed within {} ms; nothing \
                 was sent to GWS: retry later",
                waited.as_millis()
            ),
            info(
                "NEW_AGENT_CHECK_LIMIT".into(),
                &[
                    ("may_have_been_applied", "false".into()),
                    ("max_concurrent_checks", limit.to_string()),
                ],
            ),
        ),
        UpstreamError::OutOfDescriptors => Status::with_error_details(
            Code::ResourceExhausted,
            "the gateway is out of file descriptors and could not open a connection to GWS; \
             nothing was sent to GWS: retry later",
            info(
                "GATEWAY_OUT_OF_DESCRIPTORS".into(),
                &[("may_have_been_applied", "false".into())],
            ),
        ),
        UpstreamError::TooManyAgents => {
            Status::resource_exhausted("too many agents are active on this gateway; retry later")
        }
        UpstreamError::RateLimited { retry_after } => {
            let mut details = ErrorDetails::with_retry_info(Some(*retry_after));
            details.set_error_info("NEW_AGENT_RATE_LIMITED", domain, HashMap::new());
            Status::with_error_details(
                Code::Unavailable,
                format!(
                    "too many first-time credentials are being checked; retry in {} ms",
                    retry_after.as_millis().max(1)
                ),
                details,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Transport;
    use std::time::Duration;

    fn gws(code: i64, http: u16) -> Status {
        to_status(&Error::upstream(
            UpstreamError::Gws {
                status_code: code,
                status_message: "msg".into(),
                http_status: http,
            },
            "gws:8080",
        ))
    }

    #[test]
    fn every_gws_row_of_the_table() {
        let rows: &[(i64, u16, Code)] = &[
            (1, 400, Code::InvalidArgument),
            (10, 400, Code::InvalidArgument),
            (2, 400, Code::FailedPrecondition),
            (11, 400, Code::FailedPrecondition),
            (19, 400, Code::FailedPrecondition),
            (3, 403, Code::PermissionDenied),
            (5, 403, Code::PermissionDenied),
            (6, 404, Code::NotFound),
            (18, 400, Code::AlreadyExists),
            (20, 401, Code::Unauthenticated),
            (4, 500, Code::Internal),
            (12, 500, Code::Internal),
            (13, 500, Code::Internal),
            (14, 500, Code::Internal),
            (15, 500, Code::Internal),
            (16, 500, Code::Internal),
            (17, 500, Code::Internal),
            (4, 503, Code::Unavailable),
            (15, 503, Code::Unavailable),
            (9, 500, Code::Unavailable),
            (8, 400, Code::FailedPrecondition),
            (7, 200, Code::Unknown),
            (99, 500, Code::Unknown),
        ];
        for &(code, http, want) in rows {
            assert_eq!(
                gws(code, http).code(),
                want,
                "statusCode {code} HTTP {http}"
            );
        }
    }

    #[test]
    fn gws_errors_carry_error_info() {
        let status = gws(6, 404);
        assert!(
            status.message().contains("statusCode 6: msg"),
            "{}",
            status.message()
        );
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "GWS_STATUS_6");
        assert_eq!(info.domain, "gws:8080");
        assert_eq!(info.metadata["status_code"], "6");
        assert_eq!(info.metadata["status_message"], "msg");
        assert_eq!(info.metadata["http_status"], "404");
    }

    #[test]
    fn http_level_failures() {
        let up = |e| to_status(&Error::upstream(e, "h"));
        assert_eq!(
            up(UpstreamError::Http {
                http_status: 401,
                excerpt: String::new()
            })
            .code(),
            Code::Unauthenticated
        );
        for http in [502, 503, 504, 500, 404] {
            let s = up(UpstreamError::Http {
                http_status: http,
                excerpt: "<html>".into(),
            });
            assert_eq!(s.code(), Code::Unavailable, "HTTP {http}");
            assert!(s.message().contains(&http.to_string()));
        }
        let s = up(UpstreamError::BadBody {
            http_status: 200,
            excerpt: "<html>Oops".into(),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(
            s.message().contains("HTTP 200") && s.message().contains("<html>Oops"),
            "{}",
            s.message()
        );
        // Every DEADLINE_EXCEEDED says whether the operation may have been applied.
        for (error, reason, applied) in [
            (
                UpstreamError::Timeout(Duration::from_secs(1)),
                "UPSTREAM_TIMEOUT",
                "false",
            ),
            (
                UpstreamError::TimeoutAfterSend(Duration::from_secs(1)),
                "UPSTREAM_TIMEOUT",
                "true",
            ),
            (
                UpstreamError::DeadlineTooShort(Duration::from_millis(1)),
                "DEADLINE_TOO_SHORT",
                "false",
            ),
        ] {
            let s = up(error);
            assert_eq!(s.code(), Code::DeadlineExceeded);
            let info = s.get_details_error_info().unwrap();
            assert_eq!(info.reason, reason);
            assert_eq!(info.metadata["may_have_been_applied"], applied);
        }
        assert_eq!(
            up(UpstreamError::Unreachable(Transport::Connect)).code(),
            Code::Unavailable
        );
        let s = up(UpstreamError::UnreachableAfterSend(Transport::Body));
        assert_eq!(s.code(), Code::Unavailable);
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.metadata["may_have_been_applied"], "true");
        assert_eq!(
            up(UpstreamError::TooManyAgents).code(),
            Code::ResourceExhausted
        );
        let s = up(UpstreamError::RateLimited {
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("1500 ms"), "{}", s.message());
        let retry = s.get_details_retry_info().expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
        assert_eq!(
            s.get_details_error_info().unwrap().reason,
            "NEW_AGENT_RATE_LIMITED"
        );
        let s = up(UpstreamError::Unmappable("field `x` is missing".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.get_details_error_info().unwrap().reason, "GWS_BAD_REPLY");
    }

    #[test]
    fn the_gateways_own_limits_are_not_gws_failures() {
        let up = |e| to_status(&Error::upstream(e, "h"));
        let waited = Duration::from_millis(1500);
        for (error, code) in [
            (
                UpstreamError::NoSlot { limit: 480, waited },
                Code::ResourceExhausted,
            ),
            (
                UpstreamError::NoSlotBeforeDeadline { limit: 480, waited },
                Code::DeadlineExceeded,
            ),
        ] {
            let s = up(error);
            assert_eq!(s.code(), code);
            assert!(
                s.message().contains("480") && s.message().contains("1500 ms"),
                "{}",
                s.message()
            );
            assert!(s.message().contains("nothing was sent"), "{}", s.message());
            let info = s.get_details_error_info().unwrap();
            assert_eq!(info.reason, "UPSTREAM_IN_FLIGHT_LIMIT");
            assert_eq!(info.metadata["may_have_been_applied"], "false");
            assert_eq!(info.metadata["max_in_flight"], "480");
        }
        for (callers_deadline, code) in [
            (false, Code::ResourceExhausted),
            (true, Code::DeadlineExceeded),
        ] {
            let s = up(UpstreamError::NoCheckTurn {
                limit: 64,
                waited,
                callers_deadline,
            });
            assert_eq!(s.code(), code);
            // Named as the check limit it is, not as --upstream-max-in-flight.
            assert!(
                s.message()
                    .contains("64 concurrent first-time credential checks")
                    && s.message().contains("--new-agent-concurrency")
                    && !s.message().contains("in flight"),
                "{}",
                s.message()
            );
            let info = s.get_details_error_info().unwrap();
            assert_eq!(info.reason, "NEW_AGENT_CHECK_LIMIT");
            assert_eq!(info.metadata["may_have_been_applied"], "false");
            assert_eq!(info.metadata["max_concurrent_checks"], "64");
        }
        assert!(matches!(
            UpstreamError::NoCheckTurn {
                limit: 1,
                waited,
                callers_deadline: false
            }
            .deadline_was_the_callers(),
            UpstreamError::NoCheckTurn {
                callers_deadline: true,
                ..
            }
        ));
        let s = up(UpstreamError::OutOfDescriptors);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(!s.message().contains("unreachable"), "{}", s.message());
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.reason, "GATEWAY_OUT_OF_DESCRIPTORS");
        assert_eq!(info.metadata["may_have_been_applied"], "false");
        // Whose deadline it was decides the code; nothing else is relabelled.
        assert_eq!(
            UpstreamError::NoSlot { limit: 1, waited }.deadline_was_the_callers(),
            UpstreamError::NoSlotBeforeDeadline { limit: 1, waited }
        );
        assert_eq!(
            UpstreamError::Timeout(waited).deadline_was_the_callers(),
            UpstreamError::Timeout(waited)
        );
    }

    #[test]
    fn edge_errors() {
        let s = to_status(&Error::InvalidArgument(vec![FieldViolation {
            field: "keys".into(),
            description: "at least one key is required".into(),
        }]));
        assert_eq!(s.code(), Code::InvalidArgument);
        let br = s.get_details_bad_request().expect("BadRequest");
        assert_eq!(br.field_violations[0].field, "keys");
        assert_eq!(
            to_status(&Error::Credential(CredentialError::Missing)).code(),
            Code::Unauthenticated
        );
        let s = to_status(&Error::OperationFailed {
            message: "target busy".into(),
            reference_id: Some(16),
            domain: "h".into(),
        });
        assert_eq!(s.code(), Code::Aborted);
        assert!(s.message().contains("target busy"), "{}", s.message());
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.reason, "GWS_OPERATION_FAILED");
        assert_eq!(info.metadata["error_message"], "target busy");
        assert_eq!(info.metadata["reference_id"], "16");
        let ev = |e| to_status(&Error::events(e, "h"));
        let s = ev(EventsError::SlowConsumer {
            last_resume_token: "tok-1".into(),
            resumable: true,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("tok-1") && s.message().contains("without loss"));
        let s = ev(EventsError::SlowConsumer {
            last_resume_token: "tok-2".into(),
            resumable: false,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("tok-2") && s.message().contains("GAP"));
        assert_eq!(ev(EventsError::ShuttingDown).code(), Code::Unavailable);
        assert_eq!(
            ev(EventsError::Ended("none".into())).code(),
            Code::Unavailable
        );
        assert_eq!(
            ev(EventsError::NotReady(Duration::from_secs(1))).code(),
            Code::Unavailable
        );
        assert_eq!(
            ev(EventsError::TooManySubscribers(3)).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            ev(EventsError::TooManyWaits(3)).code(),
            Code::ResourceExhausted
        );
        let s = ev(EventsError::Upstream(UpstreamError::Http {
            http_status: 401,
            excerpt: String::new(),
        }));
        assert_eq!(s.code(), Code::Unauthenticated);
    }

    #[test]
    fn a_resume_token_a_replica_cannot_check_is_unavailable_and_stays_valid() {
        let ev = |why| {
            to_status(&Error::events(
                EventsError::ResumeUnchecked {
                    token: "18edb9b30e4aa2a1.7".into(),
                    why,
                },
                "h",
            ))
        };
        for (why, reason, says) in [
            (
                Unchecked::LinkDown,
                "CLUSTER_LINK_DOWN",
                "NATS connection is down",
            ),
            (
                Unchecked::NoAnswer("timed out".into()),
                "CLUSTER_NO_ANSWER",
                "NATS did not answer",
            ),
        ] {
            let s = ev(why);
            assert_eq!(s.code(), Code::Unavailable);
            let m = s.message();
            for part in [
                "\"18edb9b30e4aa2a1.7\" cannot be checked",
                says,
                "stays valid",
                "another replica",
            ] {
                assert!(m.contains(part), "{part:?} in {m}");
            }
            assert!(!m.contains("never issued") && !m.contains("GAP"), "{m}");
            let info = s.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, reason);
            assert_eq!(info.metadata["resume_token"], "18edb9b30e4aa2a1.7");
        }
    }
}
