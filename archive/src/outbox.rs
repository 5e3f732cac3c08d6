//! The message mover: raw messages are acknowledged once their catalog
//! transaction commits, with their compressed bytes in the catalog's
//! outbox; this task then writes them to the object store in packs (one
//! object holding many messages' zstd frames back to back, named by the
//! SHA-256 of its bytes) and, in one catalog transaction, points each
//! message at its pack and offset and deletes its outbox row. A crash
//! between the two leaves the rows, and the next round writes them again
//! (puts are atomic; an unreferenced pack is only wasted space).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::catalog::Catalog;
use crate::error::ArchiveError;
use crate::on_rayon;
use crate::retrieve::sha256_hex;
use crate::store::ObjectStore;

/// Messages per pack (a few kilobytes each).
const BATCH: i64 = 1024;
/// Longest wait between two rounds when nothing wakes the mover.
const POLL: Duration = Duration::from_secs(1);
/// Longest wait after repeated failures (an unreachable store).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Rest after a round that moved something, so that under a steady stream
/// of messages the rounds are few and large.
const REST: Duration = Duration::from_millis(1000);

/// Move outbox rows to the object store until aborted. Woken by every
/// catalog commit (a message's reports append to the change feed).
pub(crate) async fn run(store: Arc<dyn ObjectStore>, catalog: Catalog) {
    let mut commits = catalog.watch_changes();
    let mut backoff = POLL;
    loop {
        commits.mark_unchanged();
        match move_batch(store.as_ref(), &catalog).await {
            Ok(moved) if moved as i64 == BATCH => continue,
            Ok(moved) => {
                backoff = POLL;
                if moved > 0 {
                    tokio::time::sleep(REST).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "moving raw messages to the object store failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(POLL).await;
                }
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The object key of a pack whose bytes hash to `sha256_hex`.
pub(crate) fn pack_key(sha256_hex: &str) -> String {
    format!("messages/packs/{}/{}", &sha256_hex[0..2], sha256_hex)
}

/// Write one pack of outbox rows to the store and record it; the number
/// of messages moved.
pub(crate) async fn move_batch(
    store: &dyn ObjectStore,
    catalog: &Catalog,
) -> Result<usize, ArchiveError> {
    let rows = catalog.outbox_batch(BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // A pack is up to a few megabytes: joined and hashed off the runtime.
    let (key, pack, members) = on_rayon(move || {
        let mut pack = Vec::with_capacity(rows.iter().map(|(_, d)| d.len()).sum());
        let mut members = Vec::with_capacity(rows.len());
        for (message_id, data) in &rows {
            members.push((*message_id, pack.len() as u64));
            pack.extend_from_slice(data);
        }
        (pack_key(&sha256_hex(&pack)), Bytes::from(pack), members)
    })
    .await;
    store.put(&key, pack).await.map_err(ArchiveError::Store)?;
    catalog.record_pack(&key, &members).await?;
    Ok(members.len())
}
