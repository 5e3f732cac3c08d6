#![doc = include_str!("../README.md")]

pub mod acl;
mod association;
pub mod config;
pub mod dimse;
pub mod metrics;
mod server;
mod services;
pub mod sop_classes;

pub use config::{AllowedPeer, GatewayConfig, MoveDestination};
pub use metrics::{CountersSnapshot, GatewayCounters};
pub use server::Gateway;

/// Errors of the gateway as a whole (per-association problems are logged
/// and answered on the wire, never raised).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("listener: {0}")]
    Io(std::io::Error),
}
