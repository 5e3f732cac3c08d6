//! The one place FHIR errors become answers: an `OperationOutcome` with
//! the HTTP status and issue code FHIR R4 prescribes, as
//! `application/fhir+json`. Everything under `/fhir/r4` that fails (the
//! authorisation layer's 401/403, the router's 404/405, a body over the
//! limit, a refused message) is answered from here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pacs_archive::results::MessageRefusal;
use serde_json::{Value, json};

use crate::error::ApiError;

/// The media type of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Why a FHIR request failed.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// Not JSON, not a resource, a resource of the wrong type (400
    /// `structure` / `invalid`).
    #[error("{0}")]
    Invalid(String),
    /// A search parameter or header the server cannot honour (400).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed, but cannot be processed: a reference to nothing, no
    /// patient, a refused message (422 `processing`).
    #[error("{0}")]
    Unprocessable(String),
    /// A resource type this server does not hold (404 `not-supported`).
    #[error("{0}")]
    UnknownType(String),
    /// No resource with this id (404 `not-found`).
    #[error("{0}")]
    NotFound(String),
    /// The same identifier was recorded with other content (409).
    #[error("{0}")]
    Conflict(String),
    /// Everything the shared [`ApiError`] says (401, 403, 405, 406, 413,
    /// 415, 503, 500...).
    #[error("{0}")]
    Api(#[from] ApiError),
}

impl From<pacs_archive::ArchiveError> for FhirError {
    fn from(e: pacs_archive::ArchiveError) -> Self {
        FhirError::Api(e.into())
    }
}

impl From<MessageRefusal> for FhirError {
    fn from(r: MessageRefusal) -> Self {
        match r {
            MessageRefusal::Invalid(why) => FhirError::Unprocessable(why),
            MessageRefusal::Conflict(why) => FhirError::Conflict(format!(
                "a message with this identifier was recorded with other content ({why}); \
                 send a changed report (a correction) with a new identifier"
            )),
            MessageRefusal::Unavailable(why) => {
                FhirError::Api(ApiError::Unavailable(format!("archive unavailable: {why}")))
            }
        }
    }
}

impl FhirError {
    /// HTTP status and FHIR issue type code (the IssueType value set).
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            FhirError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            FhirError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid"),
            FhirError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "processing"),
            FhirError::UnknownType(_) => (StatusCode::NOT_FOUND, "not-supported"),
            FhirError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            FhirError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            FhirError::Api(e) => {
                let code = match e {
                    ApiError::Unauthenticated(_) => "login",
                    ApiError::Forbidden(_) => "forbidden",
                    ApiError::NotFound(_) => "not-found",
                    ApiError::BadRequest(_) => "invalid",
                    ApiError::MethodNotAllowed(_) => "not-supported",
                    ApiError::NotAcceptable(_) => "not-supported",
                    ApiError::UnsupportedMediaType(_) => "not-supported",
                    ApiError::PayloadTooLarge(_) => "too-costly",
                    ApiError::CannotRender(_) => "not-supported",
                    ApiError::Unavailable(_) => "transient",
                    ApiError::Internal(_) => "exception",
                };
                (e.status(), code)
            }
        }
    }

    /// What the client is told: for a server error, not the detail (that
    /// goes to the log).
    fn diagnostics(&self) -> String {
        match self {
            FhirError::Api(ApiError::Internal(_)) => "internal error".into(),
            FhirError::Api(e) => e.to_string(),
            other => other.to_string(),
        }
    }
}

/// An `OperationOutcome` with one issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }],
    })
}

/// A FHIR JSON answer.
pub fn fhir_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        body.to_string(),
    )
        .into_response()
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "FHIR request failed");
        } else {
            tracing::debug!(error = %self, "FHIR request refused");
        }
        let severity = if status.is_server_error() {
            "fatal"
        } else {
            "error"
        };
        let mut response = fhir_json(
            status,
            &operation_outcome(severity, code, &self.diagnostics()),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pacs\""),
            );
        }
        response
    }
}

/// Whether a request path is under the FHIR front door, whose errors are
/// OperationOutcomes.
pub fn is_fhir_path(path: &str) -> bool {
    path == "/fhir" || path.starts_with("/fhir/")
}

/// An [`ApiError`] answered in the dialect of the path it was raised for.
pub fn api_error_for(path: &str, e: ApiError) -> Response {
    if is_fhir_path(path) {
        FhirError::Api(e).into_response()
    } else {
        e.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_fhir_statuses() {
        let s = |r| FhirError::from(r).status_and_code();
        assert_eq!(
            s(MessageRefusal::Invalid("x".into())),
            (StatusCode::UNPROCESSABLE_ENTITY, "processing")
        );
        assert_eq!(
            s(MessageRefusal::Conflict("x".into())),
            (StatusCode::CONFLICT, "conflict")
        );
        assert_eq!(
            s(MessageRefusal::Unavailable("x".into())),
            (StatusCode::SERVICE_UNAVAILABLE, "transient")
        );
    }

    #[test]
    fn only_fhir_paths_get_operation_outcomes() {
        assert!(is_fhir_path("/fhir/r4/Patient/1"));
        assert!(is_fhir_path("/fhir"));
        assert!(!is_fhir_path("/fhirish"));
        assert!(!is_fhir_path("/dicom-web/studies"));
    }
}
