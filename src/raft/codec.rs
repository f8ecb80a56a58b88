//! One binary encoding for everything Raft persists or sends: bincode 2 in serde mode.
//!
//! Keeping it in one place means the log, snapshots and peer RPCs cannot drift apart.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Upper bound on one decoded value, so a corrupt or hostile length prefix cannot make us
/// allocate without bound.
const MAX_DECODED_BYTES: usize = 256 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODED_BYTES>()
}

/// Encodes a value.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, config())
}

/// Encodes a value into `out` as it goes (a snapshot into its file), without a buffer of
/// the whole encoding; returns the bytes written.
pub fn encode_into<T: Serialize>(
    value: &T,
    mut out: &mut dyn std::io::Write,
) -> Result<usize, bincode::error::EncodeError> {
    bincode::serde::encode_into_std_write(value, &mut out, config())
}

/// Decodes a value, rejecting trailing bytes (a sign of a different type or corruption).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())?;
    if read != bytes.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// Decodes a value that may borrow from `bytes` (e.g. a `&[u8]` field), rejecting trailing
/// bytes. Byte strings decoded into a `Vec<u8>` go through serde's element-by-element
/// sequence visitor; borrowing them is a single slice, which matters for multi-MiB snapshots.
pub fn decode_borrowed<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, bincode::error::DecodeError> {
    let (value, read) = bincode::serde::borrow_decode_from_slice(bytes, config())?;
    if read != bytes.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}
