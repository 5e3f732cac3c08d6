#![doc = include_str!("../README.md")]

pub mod auth;
pub mod config;
pub mod dicomweb;
pub mod error;
pub mod fhir;
pub mod frames;
pub mod metrics;
pub mod render;
pub mod results;
pub mod router;
pub mod search;
pub mod state;
pub mod thumbnails;

pub use config::HttpConfig;
pub use error::ApiError;
pub use router::router;
pub use state::AppState;

/// Serve the API on `listener` until `shutdown` resolves; in-flight
/// requests finish first.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
