//! Series thumbnails and the in-memory cache of renderings.
//!
//! A background worker follows the catalog's change feed and renders one
//! thumbnail per series (from its middle instance, once the series has been
//! quiet for a moment), off the async runtime, and stores it in the object
//! store as derived data (`derived/thumbnails/series/<uid>.jpg`). Requests
//! are served from memory, then from the object store, and only then
//! rendered (and stored) on the spot.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::ApiError;
use crate::render::{self, ImageFormat};
use crate::state::AppState;

/// A bounded cache of rendered images (first in, first out).
pub struct RenderCache {
    capacity: usize,
    inner: Mutex<(HashMap<String, Bytes>, VecDeque<String>)>,
}

impl RenderCache {
    pub fn new(capacity: usize) -> Self {
        RenderCache {
            capacity: capacity.max(1),
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.lock().0.get(key).cloned()
    }

    pub fn put(&self, key: String, value: Bytes) {
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        if map.insert(key.clone(), value).is_none() {
            order.push_back(key);
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Bytes>, VecDeque<String>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Object key of a series thumbnail.
pub fn thumbnail_key(series_uid: &str) -> String {
    format!("derived/thumbnails/series/{series_uid}.jpg")
}

/// The middle instance of a series, by instance number.
async fn middle_instance(state: &AppState, series: &str) -> Result<Option<String>, ApiError> {
    let rows = state
        .archive()
        .catalog()
        .select_text_rows(
            "SELECT sop_instance_uid FROM instances WHERE series_instance_uid = $1 \
             ORDER BY instance_number, sop_instance_uid",
            &[series.to_owned()],
            usize::MAX,
        )
        .await?;
    let middle = rows.len() / 2;
    Ok(rows.into_iter().nth(middle).and_then(|mut r| r.remove(0)))
}

/// Render a series' thumbnail (JPEG) and store it.
async fn make(state: &AppState, series: &str) -> Result<Bytes, ApiError> {
    let instance = middle_instance(state, series)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("series {series}")))?;
    let part10 = state.archive().retrieve(&instance).await?;
    let size = state.config().thumbnail_size;
    let jpeg =
        tokio::task::spawn_blocking(move || render::thumbnail(&part10, size, ImageFormat::Jpeg))
            .await
            .map_err(|e| ApiError::Internal(format!("thumbnail task: {e}")))??;
    let jpeg = Bytes::from(jpeg);
    state
        .archive()
        .store()
        .put(&thumbnail_key(series), jpeg.clone())
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(jpeg)
}

/// The thumbnail of a series in `format`: from memory, the object store, or
/// rendered now.
pub async fn series_thumbnail(
    state: &AppState,
    study: &str,
    series: &str,
    format: ImageFormat,
) -> Result<Bytes, ApiError> {
    let cache_key = format!("series-thumbnail/{series}/{format:?}");
    if let Some(hit) = state.renders().get(&cache_key) {
        return Ok(hit);
    }
    // The series must belong to the study of the path.
    let found = state
        .archive()
        .catalog()
        .select_text_rows(
            "SELECT series_instance_uid FROM series WHERE series_instance_uid = $1 AND study_instance_uid = $2",
            &[series.to_owned(), study.to_owned()],
            1,
        )
        .await?;
    if found.is_empty() {
        return Err(ApiError::NotFound(format!(
            "series {series} in study {study}"
        )));
    }
    let jpeg = match state.archive().store().get(&thumbnail_key(series)).await {
        Ok(bytes) => bytes,
        Err(pacs_archive::store::StoreError::NotFound(_)) => make(state, series).await?,
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    };
    let image = match format {
        ImageFormat::Jpeg => jpeg,
        ImageFormat::Png => {
            let png = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
                let decoded = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
                    .map_err(|e| ApiError::Internal(format!("stored thumbnail: {e}")))?;
                let mut out = std::io::Cursor::new(Vec::new());
                decoded
                    .write_to(&mut out, image::ImageFormat::Png)
                    .map_err(|e| ApiError::Internal(format!("png: {e}")))?;
                Ok(out.into_inner())
            })
            .await
            .map_err(|e| ApiError::Internal(format!("thumbnail task: {e}")))??;
            Bytes::from(png)
        }
    };
    state.renders().put(cache_key, image.clone());
    Ok(image)
}

/// How long a series must see no new instance before its thumbnail is made.
const QUIET: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(500);

fn position_file(state: &AppState) -> PathBuf {
    state.archive().config().data_dir.join("thumbnails.seq")
}

/// Follow the change feed and make the thumbnail of each new series.
pub fn spawn_worker(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let file = position_file(&state);
        let mut seq: i64 = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut saved = seq;
        let mut pending: HashMap<String, Instant> = HashMap::new();
        loop {
            match state.archive().catalog().changes_since(seq, 5000).await {
                Ok(changes) => {
                    let now = Instant::now();
                    for series in changes
                        .iter()
                        .filter_map(|c| c.series_instance_uid.as_ref())
                    {
                        pending.insert(series.clone(), now);
                    }
                    if let Some(last) = changes.last() {
                        seq = last.seq;
                    }
                    let ready: Vec<String> = pending
                        .iter()
                        .filter(|(_, seen)| seen.elapsed() >= QUIET)
                        .map(|(s, _)| s.clone())
                        .collect();
                    for series in ready {
                        pending.remove(&series);
                        let key = thumbnail_key(&series);
                        if matches!(state.archive().store().exists(&key).await, Ok(true)) {
                            continue;
                        }
                        match make(&state, &series).await {
                            Ok(_) => tracing::debug!(%series, "series thumbnail made"),
                            Err(ApiError::CannotRender(why)) => {
                                tracing::debug!(%series, %why, "no thumbnail for series")
                            }
                            Err(e) => {
                                tracing::warn!(%series, error = %e, "series thumbnail failed")
                            }
                        }
                    }
                    // Remember the position only when nothing is waiting, so
                    // a restart never skips a series.
                    if pending.is_empty() && seq != saved {
                        match std::fs::write(&file, seq.to_string()) {
                            Ok(()) => saved = seq,
                            Err(e) => {
                                tracing::warn!(error = %e, file = %file.display(), "cannot save the thumbnail worker position")
                            }
                        }
                    }
                    if changes.len() < 5000 {
                        tokio::time::sleep(POLL).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "thumbnail worker cannot read the change feed");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_first_in_first_out() {
        let c = RenderCache::new(2);
        c.put("a".into(), Bytes::from_static(b"1"));
        c.put("b".into(), Bytes::from_static(b"2"));
        c.put("c".into(), Bytes::from_static(b"3"));
        assert!(c.get("a").is_none());
        assert_eq!(c.get("c").unwrap(), Bytes::from_static(b"3"));
    }
}
