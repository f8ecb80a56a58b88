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
const FIELD_WATCH_ID: u32 = 6;
const FIELD_CREATED: u32 = 7;
const FIELD_CANCELED: u32 = 8;
const FIELD_CANCEL_CODE: u32 = 9;
const FIELD_CANCEL_REASON: u32 = 10;
const FIELD_RESUME_REVISION: u32 = 11;

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
    /// On a `WatchMany` stream: the watch this response belongs to (0 elsewhere).
    pub watch_id: u64,
    /// `WatchMany`: the watch is registered.
    pub created: bool,
    /// `WatchMany`: the watch has ended; `cancel_code` and `cancel_reason` say why.
    pub canceled: bool,
    /// `WatchMany`: a gRPC status code.
    pub cancel_code: i32,
    /// `WatchMany`: why the watch ended.
    pub cancel_reason: String,
    /// `WatchMany`: where a cancelled watch can resume.
    pub resume_revision: u64,
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
        if self.watch_id != 0 {
            prost::encoding::uint64::encode(FIELD_WATCH_ID, &self.watch_id, buf);
        }
        if self.created {
            prost::encoding::bool::encode(FIELD_CREATED, &self.created, buf);
        }
        if self.canceled {
            prost::encoding::bool::encode(FIELD_CANCELED, &self.canceled, buf);
        }
        if self.cancel_code != 0 {
            prost::encoding::int32::encode(FIELD_CANCEL_CODE, &self.cancel_code, buf);
        }
        if !self.cancel_reason.is_empty() {
            prost::encoding::string::encode(FIELD_CANCEL_REASON, &self.cancel_reason, buf);
        }
        if self.resume_revision != 0 {
            prost::encoding::uint64::encode(FIELD_RESUME_REVISION, &self.resume_revision, buf);
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
        let flags = [
            self.initial,
            self.synced,
            self.progress,
            self.created,
            self.canceled,
        ]
        .iter()
        .filter(|f| **f)
        .count()
            * 2;
        let watch_id = if self.watch_id == 0 {
            0
        } else {
            prost::encoding::uint64::encoded_len(FIELD_WATCH_ID, &self.watch_id)
        };
        let code = if self.cancel_code == 0 {
            0
        } else {
            prost::encoding::int32::encoded_len(FIELD_CANCEL_CODE, &self.cancel_code)
        };
        let reason = if self.cancel_reason.is_empty() {
            0
        } else {
            prost::encoding::string::encoded_len(FIELD_CANCEL_REASON, &self.cancel_reason)
        };
        let resume = if self.resume_revision == 0 {
            0
        } else {
            prost::encoding::uint64::encoded_len(FIELD_RESUME_REVISION, &self.resume_revision)
        };
        header + events + flags + watch_id + code + reason + resume
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
            ..EncodedWatchResponse::default()
        };
        let bytes = encoded.encode_to_vec();
        assert_eq!(bytes.len(), encoded.encoded_len());
        let decoded = pb::WatchResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.events, vec![event.clone(), event]);
        assert_eq!(decoded.header.unwrap().revision, 42);
        assert!(decoded.synced && decoded.progress && !decoded.initial);
    }

    #[test]
    fn the_watch_many_fields_decode_as_the_public_message() {
        let encoded = EncodedWatchResponse {
            watch_id: 300,
            created: true,
            canceled: true,
            cancel_code: tonic::Code::OutOfRange as i32,
            cancel_reason: "revision 3 has been compacted".into(),
            resume_revision: 1 << 40,
            ..EncodedWatchResponse::default()
        };
        let bytes = encoded.encode_to_vec();
        assert_eq!(bytes.len(), encoded.encoded_len());
        let decoded = pb::WatchResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.watch_id, 300);
        assert!(decoded.created && decoded.canceled);
        assert_eq!(decoded.cancel_code, tonic::Code::OutOfRange as i32);
        assert_eq!(decoded.cancel_reason, "revision 3 has been compacted");
        assert_eq!(decoded.resume_revision, 1 << 40);
        assert!(EncodedWatchResponse::default().encode_to_vec().is_empty());
    }
}
