//! Counters of the gateway, shared (`Arc`) with whoever exposes metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters plus the number of open associations.
#[derive(Debug, Default)]
pub struct GatewayCounters {
    pub associations_accepted: AtomicU64,
    pub associations_rejected: AtomicU64,
    pub associations_aborted: AtomicU64,
    pub associations_active: AtomicU64,
    pub echoes: AtomicU64,
    pub instances_stored: AtomicU64,
    pub instances_duplicate: AtomicU64,
    pub store_failures: AtomicU64,
    pub bytes_received: AtomicU64,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub associations_accepted: u64,
    pub associations_rejected: u64,
    pub associations_aborted: u64,
    pub associations_active: u64,
    pub echoes: u64,
    pub instances_stored: u64,
    pub instances_duplicate: u64,
    pub store_failures: u64,
    pub bytes_received: u64,
}

impl GatewayCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            associations_accepted: get(&self.associations_accepted),
            associations_rejected: get(&self.associations_rejected),
            associations_aborted: get(&self.associations_aborted),
            associations_active: get(&self.associations_active),
            echoes: get(&self.echoes),
            instances_stored: get(&self.instances_stored),
            instances_duplicate: get(&self.instances_duplicate),
            store_failures: get(&self.store_failures),
            bytes_received: get(&self.bytes_received),
        }
    }
}
