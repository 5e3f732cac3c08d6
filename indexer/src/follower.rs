//! The follower: keeps the index caught up with the catalog's change feed.

use std::sync::Arc;
use std::time::Duration;

use pacs_archive::catalog::Catalog;

use crate::StudyIndex;

/// Longest wait between two catch-ups when nothing wakes the follower.
const POLL: Duration = Duration::from_millis(200);
/// Longest wait after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Shortest time between two commits under a steady stream of changes: the
/// first change after a quiet spell is committed at once, later ones are
/// gathered (each tantivy commit writes and syncs a segment).
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) async fn follow(index: Arc<StudyIndex>, catalog: Catalog) {
    let mut commits = catalog.watch_changes();
    let mut backoff = POLL;
    let mut failing = false;
    loop {
        // Whatever is committed from here on wakes the next wait.
        commits.mark_unchanged();
        match index.catch_up(&catalog).await {
            Ok(applied) => {
                if failing {
                    tracing::info!(applied, "study index follower recovered");
                }
                failing = false;
                backoff = POLL;
                if applied > 0 {
                    tokio::time::sleep(MIN_COMMIT_INTERVAL).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "study index catch-up failed");
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    // The catalog writer is gone: poll.
                    tokio::time::sleep(POLL).await;
                }
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
