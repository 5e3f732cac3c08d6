//! The routes of the HTTP API and the layers every request passes.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::auth;
use crate::dicomweb::{qido, stow, wado, wado_uri};
use crate::error::ApiError;
use crate::fhir;
use crate::fhir::error::api_error_for;
use crate::metrics;
use crate::results;
use crate::search;
use crate::state::AppState;

/// The DICOMweb routes, relative to `/dicom-web`.
fn dicomweb() -> Router<AppState> {
    const STUDY: &str = "/studies/{study}";
    const SERIES: &str = "/studies/{study}/series/{series}";
    const INSTANCE: &str = "/studies/{study}/series/{series}/instances/{instance}";
    const FRAMES: &str = "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}";
    let mut r = Router::new()
        .route("/studies", get(qido::studies).post(stow::store))
        .route("/series", get(qido::series))
        .route("/instances", get(qido::instances))
        .route(STUDY, get(wado::instances).post(stow::store))
        .route(&format!("{STUDY}/series"), get(qido::series))
        .route(&format!("{STUDY}/instances"), get(qido::instances))
        .route(&format!("{SERIES}/instances"), get(qido::instances))
        .route(SERIES, get(wado::instances))
        .route(INSTANCE, get(wado::instances))
        .route(&format!("{INSTANCE}/frames/{{frames}}"), get(wado::frames))
        .route(&format!("{INSTANCE}/bulkdata/{{tag}}"), get(wado::bulkdata));
    for level in [STUDY, SERIES, INSTANCE] {
        r = r.route(&format!("{level}/metadata"), get(wado::metadata_of));
    }
    for level in [STUDY, SERIES, INSTANCE, FRAMES] {
        r = r
            .route(&format!("{level}/rendered"), get(wado::rendered_of))
            .route(&format!("{level}/thumbnail"), get(wado::thumbnail_of));
    }
    r
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the catalog answers and the index is open and not far behind.
async fn readyz(State(state): State<AppState>) -> Response {
    match state
        .archive()
        .catalog()
        .changes_since(i64::MAX - 1, 1)
        .await
    {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => ApiError::Unavailable(format!("catalog: {e}")).into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    if let Ok(newest) = state.archive().catalog().last_change_seq().await {
        state
            .metrics()
            .set_index_lag((newest - state.index().indexed_seq()).max(0));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().encode(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    api_error_for(uri.path(), ApiError::NotFound("no such resource".into()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    api_error_for(
        uri.path(),
        ApiError::MethodNotAllowed(format!("{method} is not allowed on this resource")),
    )
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::ACCEPT, header::CONTENT_TYPE])
        .expose_headers([
            header::WARNING,
            header::CONTENT_TYPE,
            header::CONTENT_LOCATION,
            header::LOCATION,
        ])
        .max_age(std::time::Duration::from_secs(600));
    Some(if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
            .collect();
        layer.allow_origin(AllowOrigin::list(list))
    })
}

/// The whole API: public health routes, and everything else behind the one
/// authentication and authorisation layer.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .nest("/dicom-web", dicomweb())
        .route("/wado", get(wado_uri::get))
        .route("/api/search", get(search::search))
        .route("/api/studies/{study}/reports", get(results::study_reports))
        .route(
            "/api/patients/{patient}/results",
            get(results::patient_results),
        )
        .route(
            "/api/patients/{patient}/results/{code}",
            get(results::test_history),
        )
        .route("/metrics", get(metrics_text))
        .merge(fhir::routes())
        .route_layer(from_fn_with_state(state.clone(), auth::authorize));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), metrics::track))
        .with_state(state.clone());
    match cors(&state.config().cors_allowed_origins) {
        Some(layer) => app.layer(layer),
        None => app,
    }
}
