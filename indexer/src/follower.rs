//! The follower: keeps the index caught up with the catalog's change feed.

use std::sync::Arc;
use std::time::Duration;

use pacs_archive::catalog::Catalog;

use crate::StudyIndex;

/// Longest wait between two catch-ups when nothing wakes the follower.
const POLL: Duration = Duration::from_millis(200);
/// Longest wait after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
