//! The `SmsSessionService` implementation. Handlers stay short: credentials, validation,
//! the upstream call, and errors mapped once by `status.rs`.

use super::status::Error;
use super::{auth, deadline, validate};
use crate::events::{EventStream, EventsHub};
use crate::proto::sms_session_service_server::SmsSessionService;
use crate::proto::{
    DeleteUserDataRequest, DeleteUserDataResponse, SessionEventsRequest, SessionEventsResponse,
};
use crate::upstream::{Credential, GwsClient};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct SmsSessionApi {
    gws: GwsClient,
    events: EventsHub,
    default_credential: Option<Credential>,
    upstream_timeout: Duration,
}

impl SmsSessionApi {
    pub fn new(
        gws: GwsClient,
        events: EventsHub,
        default_credential: Option<Credential>,
        upstream_timeout: Duration,
    ) -> Self {
        Self {
            gws,
            events,
            default_credential,
            upstream_timeout,
        }
    }

    fn credential<T>(&self, request: &Request<T>) -> Result<Credential, Error> {
        Ok(auth::credential(
            request.metadata(),
            self.default_credential.as_ref(),
        )?)
    }
}

type SessionEventsStream =
    Pin<Box<dyn Stream<Item = Result<SessionEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SmsSessionService for SmsSessionApi {
    async fn delete_user_data(
        &self,
        request: Request<DeleteUserDataRequest>,
    ) -> Result<Response<DeleteUserDataResponse>, Status> {
        let credential = self.credential(&request)?;
        let timeout = deadline::budget(
            request.metadata(),
            request.extensions(),
            self.upstream_timeout,
        );
        let op =
            validate::delete_user_data(request.into_inner()).map_err(Error::InvalidArgument)?;
        let host = self.gws.host();
        let agent = self
            .gws
            .agents()
            .agent(&credential)
            .map_err(|e| Error::upstream(e, host))?;
        let accepted = self
            .gws
            .delete_user_data(&agent, &op.session_id, &op.keys, timeout)
            .await
            .map_err(|e| Error::upstream(e, host))?;
        tracing::info!(agent = ?agent.key(), session_id = %op.session_id, keys = op.keys.len(),
            reference_id = ?accepted.reference_id, "DeleteUserData accepted");
        Ok(Response::new(DeleteUserDataResponse {
            reference_id: accepted.reference_id,
        }))
    }

    type SessionEventsStream = SessionEventsStream;

    async fn session_events(
        &self,
        request: Request<SessionEventsRequest>,
    ) -> Result<Response<Self::SessionEventsStream>, Status> {
        let credential = self.credential(&request)?;
        let req = validate::session_events(request.into_inner()).map_err(Error::InvalidArgument)?;
        let host = self.gws.host().to_string();
        let agent = self
            .gws
            .agents()
            .agent(&credential)
            .map_err(|e| Error::upstream(e, &host))?;
        let stream: EventStream = self
            .events
            .subscribe(agent, req.filter, req.resume)
            .await
            .map_err(|e| Error::events(e, &host))?;
        let stream = stream.map(move |item| item.map_err(|e| Error::events(e, &host).into()));
        Ok(Response::new(Box::pin(stream)))
    }
}
