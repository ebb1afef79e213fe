//! The service's codec: prost's, except that a request which is not valid protobuf is the
//! caller's error, `INVALID_ARGUMENT`, where prost's codec answers `INTERNAL` (which tells a
//! caller to retry or page someone, when the fix is on its side). Used by the generated
//! server only (`build.rs`); the generated client keeps prost's codec.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The encode buffer each call or stream starts with (tonic's default is 8 KiB). It grows for
/// larger messages; most items are far smaller, and a contact center holds thousands of
/// streams, each keeping its buffer for its whole life.
const ENCODE_BUFFER: usize = 1024;
/// tonic's default: a stream yields to the connection once this much is buffered.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Encodes responses `T` and decodes requests `U` like prost, with request errors reclassified.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder; a message that does not decode is `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            // prost's decoder has no other failure than "not this message".
            Code::Internal => Status::invalid_argument(format!(
                "the request is not a valid protobuf message: {}",
                status.message()
            )),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
