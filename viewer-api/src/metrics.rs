//! Prometheus metrics: request counts and latencies per route, ingest
//! counts and bytes, index lag; other parts of the process (the DICOM
//! gateway) add their own collectors.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use pacs_archive::Archive;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// The metrics of the HTTP API and what it reports for the archive.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    /// Changes of the catalog's feed not yet in the search index (set at
    /// each scrape).
    index_lag: Arc<AtomicI64>,
}

/// Ingest counts of the archive and the index lag, read at each scrape.
struct ArchiveCollector {
    archive: Archive,
    index_lag: Arc<AtomicI64>,
}

impl std::fmt::Debug for ArchiveCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArchiveCollector")
    }
}

impl Collector for ArchiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = self.archive.counters();
        for (name, help, value) in [
            (
                "pacs_ingest_stored",
                "Instances stored (new or replacing)",
                c.stored,
            ),
            (
                "pacs_ingest_duplicates",
                "Identical instances received again",
                c.duplicates,
            ),
            (
                "pacs_ingest_refused",
                "Objects refused by the archive",
                c.refused,
            ),
            (
                "pacs_ingest_received_bytes",
                "Part-10 bytes received",
                c.bytes_received,
            ),
            (
                "pacs_ingest_stored_bytes",
                "Compressed bytes written for new instances",
                c.bytes_stored,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let lag = ConstGauge::new(self.index_lag.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "pacs_index_lag_changes",
            "Catalog changes not yet reflected in the search index",
            None,
            lag.metric_type(),
        )?;
        lag.encode(metric)?;
        Ok(())
    }
}

/// One value another part of the process reports at each scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
    /// A gauge (goes up and down) rather than a monotonic counter.
    pub gauge: bool,
}

type SampleSource = Box<dyn Fn() -> Vec<Sample> + Send + Sync>;

/// Samples of another part of the process (the DICOM gateway), read at each
/// scrape.
struct SourceCollector(SampleSource);

impl std::fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceCollector")
    }
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for s in (self.0)() {
            if s.gauge {
                let gauge = ConstGauge::new(i64::try_from(s.value).unwrap_or(i64::MAX));
                let metric =
                    encoder.encode_descriptor(s.name, s.help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            } else {
                let counter = ConstCounter::new(s.value);
                let metric =
                    encoder.encode_descriptor(s.name, s.help, None, counter.metric_type())?;
                counter.encode(metric)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    pub fn new(archive: &Archive) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "pacs_http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "pacs_http_request_duration_seconds",
            "HTTP request latency by route (until the response head)",
            latency.clone(),
        );
        let index_lag = Arc::new(AtomicI64::new(0));
        registry.register_collector(Box::new(ArchiveCollector {
            archive: archive.clone(),
            index_lag: index_lag.clone(),
        }));
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            index_lag,
        }
    }

    /// Report the samples of another part of the process at each scrape.
    pub fn register_source(&self, source: impl Fn() -> Vec<Sample> + Send + Sync + 'static) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(Box::new(SourceCollector(Box::new(source))));
    }

    pub fn set_index_lag(&self, lag: i64) {
        self.index_lag.store(lag, Ordering::Relaxed);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }
}

/// The layer that counts and times every request by its route pattern (not
/// its path, which would make one series per UID).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    state.metrics().observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
