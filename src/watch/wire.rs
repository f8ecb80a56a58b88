//! Pre-encoded watch responses. An event is encoded once, as the bytes of field 2 of
//! `WatchResponse` (tag, length, `Event`), and those bytes are shared by every watcher that
//! receives it; a response is its own small header followed by the shared chunks.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::proto::v1 as pb;

/// Field numbers of `WatchResponse` (see `proto/bowline/v1/watch.proto`).
const FIELD_HEADER: u32 = 1;
const FIELD_EVENTS: u32 = 2;
const FIELD_INITIAL: u32 = 3;
const FIELD_SYNCED: u32 = 4;
const FIELD_PROGRESS: u32 = 5;

/// One event, encoded once as a `WatchResponse.events` entry.
pub fn encode_event_chunk(event: &pb::Event) -> Bytes {
    let mut buf = Vec::with_capacity(event.encoded_len() + 8);
    prost::encoding::message::encode(FIELD_EVENTS, event, &mut buf);
    Bytes::from(buf)
}

/// A `WatchResponse` whose events are already encoded. Only ever encoded (server side);
/// clients decode the ordinary generated `WatchResponse`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedWatchResponse {
    /// Encoded per response: it is small and differs between watchers.
    pub header: Option<pb::ResponseHeader>,
    /// Shared event chunks from [`encode_event_chunk`].
    pub events: Vec<Bytes>,
    /// Part of the initial listing.
    pub initial: bool,
    /// Initial listing complete.
    pub synced: bool,
    /// Progress notice.
    pub progress: bool,
}

impl Message for EncodedWatchResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(header) = &self.header {
            prost::encoding::message::encode(FIELD_HEADER, header, buf);
        }
        for chunk in &self.events {
            buf.put_slice(chunk);
        }
        if self.initial {
            prost::encoding::bool::encode(FIELD_INITIAL, &self.initial, buf);
        }
        if self.synced {
            prost::encoding::bool::encode(FIELD_SYNCED, &self.synced, buf);
        }
        if self.progress {
            prost::encoding::bool::encode(FIELD_PROGRESS, &self.progress, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Never decoded by the server; skip anything, keeping the stream well-formed.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let header = self.header.as_ref().map_or(0, |h| {
            prost::encoding::message::encoded_len(FIELD_HEADER, h)
        });
        let events: usize = self.events.iter().map(Bytes::len).sum();
        let flags = [self.initial, self.synced, self.progress]
            .iter()
            .filter(|f| **f)
            .count()
            * 2;
        header + events + flags
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pre_encoded_response_decodes_as_the_public_message() {
        let event = pb::Event {
            r#type: pb::EventType::Delete as i32,
            kind: pb::ObjectKind::Service as i32,
            revision: 42,
            object: Some(pb::event::Object::Service(pb::Service {
                name: "web".into(),
                ..Default::default()
            })),
        };
        let encoded = EncodedWatchResponse {
            header: Some(pb::ResponseHeader {
                revision: 42,
                node_id: 2,
                leader_id: 1,
                raft_term: 3,
            }),
            events: vec![encode_event_chunk(&event), encode_event_chunk(&event)],
            initial: false,
            synced: true,
            progress: true,
        };
        let bytes = encoded.encode_to_vec();
        assert_eq!(bytes.len(), encoded.encoded_len());
        let decoded = pb::WatchResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.events, vec![event.clone(), event]);
        assert_eq!(decoded.header.unwrap().revision, 42);
        assert!(decoded.synced && decoded.progress && !decoded.initial);
    }
}
