//! Turning a stored blob back into the bytes that were received, with the
//! integrity check that makes a damaged blob an error, never a silent answer.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::catalog::InstanceRow;
use crate::error::ArchiveError;

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Decompress a blob and check it against the instance's recorded SHA-256
/// and size. CPU-bound: call it on rayon.
pub fn decode_blob(row: &InstanceRow, blob: &[u8]) -> Result<Bytes, ArchiveError> {
    decode_verified(
        &row.sop_instance_uid,
        &row.blob_key,
        &row.sha256,
        row.original_size,
        blob,
    )
}

/// Decompress a blob and check it against a recorded SHA-256 and size;
/// `what` names the object in the integrity error (a SOP Instance UID, a
/// message). CPU-bound: call it on rayon.
pub fn decode_verified(
    what: &str,
    blob_key: &str,
    sha256: &str,
    original_size: i64,
    blob: &[u8],
) -> Result<Bytes, ArchiveError> {
    let integrity = |detail: String| ArchiveError::Integrity {
        sop_instance_uid: what.to_owned(),
        blob_key: blob_key.to_owned(),
        detail,
    };
    let original = crate::blob::decode(blob, original_size.max(0) as usize).map_err(integrity)?;
    let actual = sha256_hex(&original);
    if actual != sha256 {
        return Err(integrity(format!("SHA-256 is {actual}, expected {sha256}")));
    }
    Ok(Bytes::from(original))
}
