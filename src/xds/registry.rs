//! The proxies connected to this node and what each has been sent and has ACKed, for
//! `bowline proxy status`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::proto::v1 as pb;

/// Per-type status of one stream.
#[derive(Debug, Clone, Default)]
pub struct TypeRecord {
    /// Version of the last response sent.
    pub sent_version: String,
    /// Version last ACKed.
    pub acked_version: String,
    /// The last NACK's message.
    pub last_nack: String,
    /// Resources sent.
    pub resources: u32,
}

/// One connected proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxyRecord {
    /// `node.id`.
    pub node_id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `sotw` or `delta`.
    pub stream: &'static str,
    /// When the stream opened (Unix ms).
    pub connected_at_ms: u64,
    /// By short type name (CDS, EDS, LDS, RDS).
    pub types: BTreeMap<&'static str, TypeRecord>,
}

/// Registry of live streams on this node.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    /// Stream id → record. Short critical sections only.
    streams: Mutex<BTreeMap<u64, ProxyRecord>>,
    /// Next stream id.
    next: std::sync::atomic::AtomicU64,
}

impl ProxyRegistry {
    /// A new stream id.
    pub fn open(&self, record: ProxyRecord) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, record);
        id
    }

    /// Updates one stream's record.
    pub fn update(&self, id: u64, f: impl FnOnce(&mut ProxyRecord)) {
        if let Some(r) = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            f(r);
        }
    }

    /// Forgets a closed stream.
    pub fn close(&self, id: u64) {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record as API messages.
    pub fn list(&self, control_plane_node: u64) -> Vec<pb::ProxyStatus> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| pb::ProxyStatus {
                node_id: r.node_id.clone(),
                cluster: r.cluster.clone(),
                stream: r.stream.to_string(),
                control_plane_node,
                connected_at_ms: r.connected_at_ms,
                types: r
                    .types
                    .iter()
                    .map(|(t, s)| pb::ProxyTypeStatus {
                        r#type: t.to_string(),
                        sent_version: s.sent_version.clone(),
                        acked_version: s.acked_version.clone(),
                        last_nack: s.last_nack.clone(),
                        resources: s.resources,
                    })
                    .collect(),
            })
            .collect()
    }
}
