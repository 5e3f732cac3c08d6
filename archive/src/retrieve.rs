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
    let integrity = |detail: String| ArchiveError::Integrity {
        sop_instance_uid: row.sop_instance_uid.clone(),
        blob_key: row.blob_key.clone(),
        detail,
    };
    let original = zstd::bulk::decompress(blob, row.original_size.max(0) as usize)
        .map_err(|e| integrity(format!("blob does not decompress: {e}")))?;
    if original.len() as i64 != row.original_size {
        return Err(integrity(format!(
            "decompressed to {} bytes, expected {}",
            original.len(),
            row.original_size
        )));
    }
    let actual = sha256_hex(&original);
    if actual != row.sha256 {
        return Err(integrity(format!(
            "SHA-256 is {actual}, expected {}",
            row.sha256
        )));
    }
    Ok(Bytes::from(original))
}
