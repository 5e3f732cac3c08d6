//! What every handler shares.

use std::sync::Arc;

use pacs_archive::Archive;
use pacs_indexer::StudyIndex;

use crate::auth::{AuditSink, LogAudit, Policy, RolePolicy, TokenCache};
use crate::config::HttpConfig;
use crate::metrics::Metrics;
use crate::thumbnails::RenderCache;

/// The state of the viewer API. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    archive: Archive,
    index: Arc<StudyIndex>,
    config: HttpConfig,
    base_url: String,
    policy: Arc<dyn Policy>,
    audit: Arc<dyn AuditSink>,
    tokens: TokenCache,
    metrics: Metrics,
    renders: RenderCache,
}

impl AppState {
    /// State with the role policy of this release.
    pub fn new(archive: Archive, index: Arc<StudyIndex>, config: HttpConfig) -> Self {
        Self::with_policy(archive, index, config, Arc::new(RolePolicy))
    }

    pub fn with_policy(
        archive: Archive,
        index: Arc<StudyIndex>,
        config: HttpConfig,
        policy: Arc<dyn Policy>,
    ) -> Self {
        let metrics = Metrics::new(&archive);
        let renders = RenderCache::new(config.render_cache_entries);
        AppState {
            inner: Arc::new(Inner {
                base_url: config.base_url(),
                archive,
                index,
                config,
                policy,
                audit: Arc::new(LogAudit),
                tokens: TokenCache::default(),
                metrics,
                renders,
            }),
        }
    }

    /// Send audit events to `audit` instead of the log. A construction
    /// step: call it before the state is cloned.
    pub fn with_audit(mut self, audit: Arc<dyn AuditSink>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_audit is called before the state is shared")
            .audit = audit;
        self
    }

    pub fn audit(&self) -> &dyn AuditSink {
        self.inner.audit.as_ref()
    }

    pub fn archive(&self) -> &Archive {
        &self.inner.archive
    }

    pub fn index(&self) -> &Arc<StudyIndex> {
        &self.inner.index
    }

    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// The public base URL (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// `<base>/dicom-web`.
    pub fn dicomweb_url(&self) -> String {
        format!("{}/dicom-web", self.inner.base_url)
    }

    pub fn policy(&self) -> &dyn Policy {
        self.inner.policy.as_ref()
    }

    pub fn tokens(&self) -> &TokenCache {
        &self.inner.tokens
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn renders(&self) -> &RenderCache {
        &self.inner.renders
    }
}
