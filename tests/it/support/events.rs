//! Test helpers for SessionEvents streams: open one, take its next item (bounded by
//! [`STEP`]), expect a notice. Waits are on stream items, never sleeps.

#![allow(dead_code)]

use super::gateway::{Harness, STEP, authed};
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::{NoticeKind, SessionEventsRequest, SessionEventsResponse};
use tonic::{Status, Streaming};

pub type Stream = Streaming<SessionEventsResponse>;

pub async fn open(
    h: &Harness,
    agent: (&str, &str),
    req: SessionEventsRequest,
) -> Result<Stream, Status> {
    let mut client = h.client().await;
    let call = client.session_events(authed(req, agent));
    Ok(tokio::time::timeout(STEP, call)
        .await
        .expect("stream opens in time")?
        .into_inner())
}

pub async fn next(stream: &mut Stream) -> Result<SessionEventsResponse, Status> {
    match tokio::time::timeout(STEP, stream.message())
        .await
        .expect("an item in time")?
    {
        Some(item) => Ok(item),
        None => panic!("stream ended without an item"),
    }
}

/// The stream's next item, which must be a notice of `kind`.
pub async fn expect_notice(stream: &mut Stream, kind: NoticeKind) -> SessionEventsResponse {
    let item = next(stream).await.unwrap();
    let got = match &item.event {
        Some(Event::Notice(n)) => NoticeKind::try_from(n.kind).ok(),
        _ => None,
    };
    assert_eq!(got, Some(kind), "{item:?}");
    item
}

/// Opens a stream and checks that its first item is SUBSCRIBED.
pub async fn subscribed(h: &Harness, agent: (&str, &str), req: SessionEventsRequest) -> Stream {
    subscribed_at(h, agent, req).await.0
}

/// Like [`subscribed`], also returning the SUBSCRIBED notice's resume token.
pub async fn subscribed_at(
    h: &Harness,
    agent: (&str, &str),
    req: SessionEventsRequest,
) -> (Stream, String) {
    let mut stream = open(h, agent, req).await.expect("stream opens");
    let first = expect_notice(&mut stream, NoticeKind::Subscribed).await;
    (stream, first.resume_token)
}
