//! The stream item the hub fans out: one notification (or notice, or snapshot) shared by the
//! replay buffer, every subscriber's queue and the wire, never copied per subscriber, and
//! encoded to protobuf at most once however many streams send it. The generated server
//! streams this type (`build.rs` maps `SessionEventsResponse` to it on the server side only),
//! so a fan-out to 10,000 streams costs one encoding and 10,000 copies of its bytes.

use crate::proto::SessionEventsResponse;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};
use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone, Default)]
pub struct SharedItem(Arc<Shared>);

/// What the feed's modules call a stream item.
pub type Item = SharedItem;

#[derive(Debug, Clone, Default)]
struct Shared {
    response: SessionEventsResponse,
    /// The encoding of `response`, made once: when the feed stores a notification (its size
    /// is what the replay bounds count), else by the first stream that sends the item.
    encoded: OnceLock<Vec<u8>>,
}

impl SharedItem {
    pub fn new(response: SessionEventsResponse) -> Self {
        Self(Arc::new(Shared {
            response,
            encoded: OnceLock::new(),
        }))
    }

    /// An item stamped with its `resume_token` in front of a payload that is the encoding of
    /// `response` without one (what a cluster owner publishes): the bytes are joined, not
    /// encoded again. Field 1 (the token) comes first, as prost encodes it.
    pub fn stamped(mut response: SessionEventsResponse, token: String, payload: &[u8]) -> Self {
        let mut encoded = Vec::with_capacity(payload.len() + token.len() + 6);
        if !token.is_empty() {
            prost::encoding::string::encode(1, &token, &mut encoded);
        }
        encoded.extend_from_slice(payload);
        response.resume_token = token;
        Self(Arc::new(Shared {
            response,
            encoded: OnceLock::from(encoded),
        }))
    }

    /// The response itself, copied out (for a unary reply that embeds it).
    pub fn to_response(&self) -> SessionEventsResponse {
        self.0.response.clone()
    }

    fn encoded(&self) -> &[u8] {
        self.0
            .encoded
            .get_or_init(|| prost::Message::encode_to_vec(&self.0.response))
    }
}

impl PartialEq for SharedItem {
    fn eq(&self, other: &Self) -> bool {
        self.0.response == other.0.response
    }
}

impl std::ops::Deref for SharedItem {
    type Target = SessionEventsResponse;

    fn deref(&self) -> &SessionEventsResponse {
        &self.0.response
    }
}

/// Encodes exactly as `SessionEventsResponse` does (its cached bytes are that encoding), so
/// a client decodes it as one. Decoding is the client's business, but works too.
impl prost::Message for SharedItem {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.encoded());
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let shared = Arc::make_mut(&mut self.0);
        shared.encoded = OnceLock::new();
        shared.response.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.encoded().len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{StreamNotice, session_events_response::Event};
    use prost::Message;

    #[test]
    fn encodes_as_the_response_once_and_decodes_back() {
        let response = SessionEventsResponse {
            resume_token: "e.1".into(),
            receive_time: None,
            event: Some(Event::Notice(StreamNotice {
                kind: 1,
                detail: "subscribed".into(),
            })),
        };
        let item = SharedItem::new(response.clone());
        let wire = item.encode_to_vec();
        assert_eq!(wire, response.encode_to_vec());
        assert_eq!(
            SessionEventsResponse::decode(wire.as_slice()).unwrap(),
            response
        );
        // A clone shares the encoding: the bytes are the same allocation.
        let clone = item.clone();
        assert!(std::ptr::eq(clone.encoded(), item.encoded()));
        let back = SharedItem::decode(wire.as_slice()).unwrap();
        assert_eq!(*back, response);
    }

    #[test]
    fn a_stamped_payload_encodes_exactly_as_the_whole_response() {
        let response = SessionEventsResponse {
            resume_token: String::new(),
            receive_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            event: Some(Event::Notice(StreamNotice {
                kind: 2,
                detail: "x".repeat(300),
            })),
        };
        let payload = response.encode_to_vec();
        let item = SharedItem::stamped(response.clone(), "00000000000000ff.77".into(), &payload);
        let whole = SessionEventsResponse {
            resume_token: "00000000000000ff.77".into(),
            ..response
        };
        assert_eq!(item.encode_to_vec(), whole.encode_to_vec());
        assert_eq!(*item, whole);
    }
}
