//! FHIR R4 under `/fhir/r4`: the second front door of the archive's one
//! results model (the first is the HL7 v2 listener).
//!
//! - `routes.rs`: the handlers: `POST /fhir/r4` (transaction or batch
//!   Bundle), `POST /fhir/r4/DiagnosticReport`, reads by id, searches,
//!   `metadata` (CapabilityStatement); content negotiation.
//! - `resources.rs`: FHIR JSON to and from the results model.
//! - `search.rs`: search parameters into catalog conditions, `searchset`
//!   Bundles with paging links.
//! - `error.rs`: every FHIR error as an `OperationOutcome`, in one place.
//!
//! Resource ids are the catalog's row ids: `DiagnosticReport/{reports.id}`,
//! `Observation/{observations.id}`, `Patient/{patients.id}`. Rows are never
//! renumbered, so ids are stable, and a report or result is readable
//! whichever front door it came through. Posted messages go through
//! `Archive::ingest_message` like HL7 ones: sender `fhir:<token name>`,
//! control id the Bundle's (or DiagnosticReport's) identifier when given,
//! else the SHA-256 of the body, so a re-POST is answered with what was
//! stored the first time.

pub mod error;
pub mod resources;
pub mod routes;
pub mod search;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// The FHIR routes, with their full paths (the authorisation layer's
/// action table names them so).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/r4", post(routes::transaction))
        .route("/fhir/r4/metadata", get(routes::metadata))
        .route("/fhir/r4/{type}", get(routes::search).post(routes::create))
        .route("/fhir/r4/{type}/{id}", get(routes::read))
}
