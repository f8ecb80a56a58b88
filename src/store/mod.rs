//! The applied state: a pure, deterministic `apply(index, command)` over in-memory indexes.
//! No I/O here: the state reaches the disk only in the snapshots `raft::state_machine`
//! writes.

mod apply;
mod state;

pub use apply::{apply_command, check_revision, Change};
pub use state::{EndpointKey, RegistryState};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::ConfigSpec;

/// An object as stored: the value plus the revisions that created and last changed it.
/// A revision is the Raft log index of the entry that made the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored<T> {
    /// The object itself, shared: the watch history, a snapshot being encoded and read
    /// replies hold it without copying it. Encoded as the bare value.
    pub value: Arc<T>,
    /// Log index of the entry that created the object.
    pub create_revision: u64,
    /// Log index of the entry that last changed it.
    pub mod_revision: u64,
}

/// Any stored object, for change events.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredObject {
    /// A service.
    Service(Stored<crate::model::Service>),
    /// An endpoint.
    Endpoint(Stored<crate::model::Endpoint>),
    /// A config object.
    Config(StoredConfig),
}

/// A stored object borrowed from the state or a change: events and filters read it in
/// place instead of copying it.
#[derive(Debug, Clone, Copy)]
pub enum ObjectRef<'a> {
    /// A service.
    Service(&'a Stored<crate::model::Service>),
    /// An endpoint.
    Endpoint(&'a Stored<crate::model::Endpoint>),
    /// A config object.
    Config(&'a StoredConfig),
}

impl StoredObject {
    /// The object, borrowed.
    pub fn borrowed(&self) -> ObjectRef<'_> {
        match self {
            StoredObject::Service(s) => ObjectRef::Service(s),
            StoredObject::Endpoint(e) => ObjectRef::Endpoint(e),
            StoredObject::Config(c) => ObjectRef::Config(c),
        }
    }
}

/// A typed config object with its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConfig {
    /// Namespace of the object.
    pub namespace: String,
    /// Name (the service it applies to).
    pub name: String,
    /// The spec and its revisions.
    pub stored: Stored<ConfigSpec>,
}
