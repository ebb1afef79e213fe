//! The `SmsSessionService` implementation. Every operation RPC takes the one path in
//! [`SmsSessionApi::operate`] (credentials, deadline budget, validation into a typed
//! [`Operation`](crate::upstream::Operation), the agent, the span and outcome log line, the
//! upstream call, errors mapped once by `status.rs`); every read takes
//! [`SmsSessionApi::read`]. Handlers are one line each.

use super::status::Error;
use super::validate::{OperationRequest, ReadRequest};
use super::{auth, deadline, validate};
use crate::events::{EventStream, EventsHub, Expect, Outcome, SharedItem};
use crate::mapping::{self, MappingError, ReferenceId};
use crate::proto::sms_session_service_server::SmsSessionService;
use crate::proto::*;
use crate::telemetry;
use crate::upstream::{Agent, Credential, GwsClient, UpstreamError};
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// How long one call may take.
struct Limits {
    /// For the upstream exchange: the caller's deadline, else `--upstream-timeout`.
    budget: Duration,
    /// The caller's own deadline (minus the answering margin), if it sent one.
    caller: Option<Instant>,
}

impl Limits {
    /// An upstream failure as this call's caller sees it: a call that never got an upstream
    /// slot ran out of the caller's own deadline when it sent one (the upstream client sees
    /// only a time budget, not whose it was).
    fn upstream(&self, error: UpstreamError, host: &str) -> Error {
        let error = match self.caller {
            Some(_) => error.deadline_was_the_callers(),
            None => error,
        };
        Error::upstream(error, host)
    }
}

pub struct SmsSessionApi {
    gws: GwsClient,
    events: EventsHub,
    default_credential: Option<Credential>,
    upstream_timeout: Duration,
    /// Longest wait for an operation's confirming notification (`wait_for_outcome`).
    outcome_timeout: Duration,
}

/// The response of every operation RPC: `{ reference_id, outcome, reference_id_json }`.
pub trait OperationResponse {
    fn new(reference: ReferenceId, outcome: Option<OperationOutcome>) -> Self;
}

/// The response of a read, built from the GWS reply by the one mapper the events use too.
pub trait ReadResponse: Sized {
    fn from_reply(reply: &Map<String, Value>) -> Result<Self, MappingError>;
}

impl ReadResponse for ListSessionsResponse {
    fn from_reply(reply: &Map<String, Value>) -> Result<Self, MappingError> {
        Ok(Self {
            sessions: mapping::map_sessions(reply)?,
        })
    }
}

impl ReadResponse for GetSessionResponse {
    fn from_reply(reply: &Map<String, Value>) -> Result<Self, MappingError> {
        Ok(Self {
            session: Some(mapping::map_session(reply)?),
        })
    }
}

impl ReadResponse for GetTranscriptResponse {
    fn from_reply(reply: &Map<String, Value>) -> Result<Self, MappingError> {
        Ok(Self {
            messages: mapping::map_transcript(reply)?,
        })
    }
}

impl SmsSessionApi {
    pub fn new(
        gws: GwsClient,
        events: EventsHub,
        default_credential: Option<Credential>,
        upstream_timeout: Duration,
        outcome_timeout: Duration,
    ) -> Self {
        Self {
            gws,
            events,
            default_credential,
            upstream_timeout,
            outcome_timeout,
        }
    }

    /// Who the caller is and how long the call may take; then the message.
    fn begin<T>(&self, request: Request<T>) -> Result<(Credential, Limits, T), Error> {
        let credential = auth::credential(request.metadata(), self.default_credential.as_ref())?;
        let caller = deadline::caller(request.metadata(), request.extensions());
        let limits = Limits {
            budget: caller.unwrap_or(self.upstream_timeout),
            caller: caller.map(|left| Instant::now() + left),
        };
        Ok((credential, limits, request.into_inner()))
    }

    /// The caller's agent; an unknown credential is checked upstream first (once, however
    /// many of its calls arrive together), within `budget`.
    async fn agent(&self, credential: &Credential, limits: &Limits) -> Result<Arc<Agent>, Error> {
        self.gws
            .agent(credential.key(), credential, limits.budget)
            .await
            .map_err(|e| limits.upstream(e, self.gws.host()))
    }

    /// The one path of every operation RPC. With `wait_for_outcome`, the agent's feed is
    /// subscribed and a waiter registered before the POST, and the call returns once the
    /// confirming notification came (CONFIRMED), an Error notification came (ABORTED), or the
    /// wait ran out (UNCONFIRMED: accepted, not confirmed, never reported as a failure).
    async fn operate<R, S>(&self, request: Request<R>) -> Result<Response<S>, Status>
    where
        R: OperationRequest,
        S: OperationResponse,
    {
        let (credential, limits, message) = self.begin(request)?;
        let budget = limits.budget;
        let deadline = Instant::now() + budget;
        let op = message.validate().map_err(Error::InvalidArgument)?;
        let agent = self.agent(&credential, &limits).await?;
        let host = self.gws.host();
        let work = async {
            let pending = if op.wait_for_outcome {
                let expect = Expect::new(&op.session_id, &op.operation);
                let pending = self.events.expect(agent.clone(), expect, budget).await;
                Some(pending.map_err(|e| Error::events(e, host))?)
            } else {
                None
            };
            // A call that does not wait is still recorded: until it is answered, an Error
            // about its session may be its own, not a waiting call's.
            let sending = match pending {
                None => Some(agent.unsettled().sending(&op.session_id)),
                Some(_) => None,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = self
                .gws
                .operation(&agent, &op.session_id, &op.operation, remaining)
                .await;
            let pending = match (&result, sending, pending) {
                (Ok(accepted), Some(sending), _) => {
                    sending.answered(accepted.reference.id);
                    None
                }
                (Err(e), sending, pending) if e.not_applied() => {
                    if let Some(sending) = sending {
                        sending.not_applied();
                    }
                    if let Some(pending) = pending {
                        pending.not_applied();
                    }
                    None
                }
                // Dropped with the error: the operation may have been applied.
                (_, _, pending) => pending,
            };
            let accepted = result.map_err(|e| limits.upstream(e, host))?;
            let Some(pending) = pending else {
                return Ok((accepted, None));
            };
            pending.arm(accepted.reference.id);
            // The wait is bounded by the caller's deadline and `--outcome-timeout`, not by
            // the upstream timeout (which bounds the POST only).
            let by_config = Instant::now() + self.outcome_timeout;
            let until = limits.caller.map_or(by_config, |d| d.min(by_config));
            let outcome = pending.outcome(until).await;
            crate::metrics::OUTCOME_WAITS.inc([outcome.label()]);
            let outcome = match outcome {
                Outcome::Confirmed(item) => OperationOutcome {
                    status: OutcomeStatus::Confirmed as i32,
                    event: Some(item.to_response()),
                },
                Outcome::Unconfirmed => OperationOutcome {
                    status: OutcomeStatus::Unconfirmed as i32,
                    event: None,
                },
                Outcome::Failed(message) => {
                    return Err(Error::OperationFailed {
                        message,
                        reference_id: accepted.reference.id,
                        domain: host.to_string(),
                    });
                }
            };
            Ok((accepted, Some(outcome)))
        };
        match work.await {
            Ok((accepted, outcome)) => {
                let outcome_status = outcome.as_ref().map(|o| o.status().as_str_name());
                // Per call, so at debug: at info a busy gateway would spend CPU formatting this
                // line for every call (the request metrics count every call).
                tracing::debug!(agent = ?agent.key(), session_id = %op.session_id,
                    trace_id = telemetry::trace_id(), reference_id = ?accepted.reference.id, outcome = ?outcome_status,
                    "operation accepted");
                Ok(Response::new(S::new(accepted.reference, outcome)))
            }
            Err(error) => {
                tracing::info!(agent = ?agent.key(), session_id = %op.session_id,
                    trace_id = telemetry::trace_id(), %error, "operation failed");
                Err(error.into())
            }
        }
    }

    /// The one path of every read RPC.
    async fn read<R, S>(&self, request: Request<R>) -> Result<Response<S>, Status>
    where
        R: ReadRequest,
        S: ReadResponse,
    {
        let (credential, limits, message) = self.begin(request)?;
        let budget = limits.budget;
        let read = message.validate().map_err(Error::InvalidArgument)?;
        let key = credential.key();
        // For an unknown credential the read itself is its check: one request, not two.
        let result = self
            .gws
            .read_as(key, &credential, &read, budget)
            .await
            .and_then(|(_, reply)| reply)
            .and_then(|reply| {
                S::from_reply(&reply).map_err(|e| UpstreamError::Unmappable(e.to_string()))
            });
        match result {
            Ok(response) => {
                tracing::debug!(agent = ?key, session_id = read.session_id(),
                    trace_id = telemetry::trace_id(), "read answered");
                Ok(Response::new(response))
            }
            Err(error) => {
                tracing::info!(agent = ?key, session_id = read.session_id(),
                    trace_id = telemetry::trace_id(), %error, "read failed");
                Err(limits.upstream(error, self.gws.host()).into())
            }
        }
    }
    /// SessionEvents: the agent's shared feed, filtered, from the resume point.
    async fn subscribe(
        &self,
        request: Request<SessionEventsRequest>,
    ) -> Result<Response<SessionEventsStream>, Status> {
        let (credential, limits, message) = self.begin(request)?;
        let req = validate::session_events(message).map_err(Error::InvalidArgument)?;
        let host = self.gws.host().to_string();
        let agent = self.agent(&credential, &limits).await?;
        let stream: EventStream = self
            .events
            .subscribe(agent, req.filter, req.resume)
            .await
            .map_err(|e| Error::events(e, &host))?;
        let stream = stream.map(move |item| item.map_err(|e| Error::events(e, &host).into()));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Streams the shared items themselves: encoded once for all subscribers (`events::SharedItem`).
type SessionEventsStream = Pin<Box<dyn Stream<Item = Result<SharedItem, Status>> + Send>>;

/// The whole service from one list: each operation RPC delegates to
/// [`SmsSessionApi::operate`], each read to [`SmsSessionApi::read`]. (A macro builds the whole
/// `impl`, attribute included, because `async_trait` does not see into macros inside it.)
macro_rules! service {
    (
        operations { $($op:ident($op_req:ident) -> $op_resp:ident;)* }
        reads { $($read:ident($read_req:ident) -> $read_resp:ident;)* }
    ) => {
        $(
            impl OperationResponse for $op_resp {
                fn new(reference: ReferenceId, outcome: Option<OperationOutcome>) -> Self {
                    Self {
                        reference_id: reference.id,
                        reference_id_json: reference.json,
                        outcome,
                    }
                }
            }
        )*

        #[tonic::async_trait]
        impl SmsSessionService for SmsSessionApi {
            $(
                async fn $op(&self, request: Request<$op_req>) -> Result<Response<$op_resp>, Status> {
                    self.operate(request).await
                }
            )*
            $(
                async fn $read(&self, request: Request<$read_req>) -> Result<Response<$read_resp>, Status> {
                    self.read(request).await
                }
            )*

            type SessionEventsStream = SessionEventsStream;

            async fn session_events(
                &self,
                request: Request<SessionEventsRequest>,
            ) -> Result<Response<Self::SessionEventsStream>, Status> {
                self.subscribe(request).await
            }
        }
    };
}

service! {
    operations {
        attach_user_data(AttachUserDataRequest) -> AttachUserDataResponse;
        update_user_data(UpdateUserDataRequest) -> UpdateUserDataResponse;
        delete_user_data(DeleteUserDataRequest) -> DeleteUserDataResponse;
        set_disposition(SetDispositionRequest) -> SetDispositionResponse;
        add_comment(AddCommentRequest) -> AddCommentResponse;
        accept(AcceptRequest) -> AcceptResponse;
        reject(RejectRequest) -> RejectResponse;
        complete(CompleteRequest) -> CompleteResponse;
        leave(LeaveRequest) -> LeaveResponse;
        send_message(SendMessageRequest) -> SendMessageResponse;
        send_to_agents(SendToAgentsRequest) -> SendToAgentsResponse;
        send_url(SendUrlRequest) -> SendUrlResponse;
        send_start_typing_notification(SendStartTypingNotificationRequest) -> SendStartTypingNotificationResponse;
        send_stop_typing_notification(SendStopTypingNotificationRequest) -> SendStopTypingNotificationResponse;
        transfer(TransferRequest) -> TransferResponse;
        consult(ConsultRequest) -> ConsultResponse;
        invite(InviteRequest) -> InviteResponse;
    }
    reads {
        list_sessions(ListSessionsRequest) -> ListSessionsResponse;
        get_session(GetSessionRequest) -> GetSessionResponse;
        get_transcript(GetTranscriptRequest) -> GetTranscriptResponse;
    }
}
