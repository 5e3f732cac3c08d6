//! The one error type of the viewer API, and the one place errors become
//! HTTP answers: JSON `{"error": ..., "status": ...}` with the right status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials, or credentials that are not valid (401).
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    /// Valid credentials without the right to do this (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A malformed request: query parameter, header, body (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The resource exists but not with this method (405).
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// Nothing the client accepts can be produced (406).
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// The request body has a media type this route does not take (415).
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The request body is over the configured limit (413).
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// A stored object cannot be turned into what was asked, e.g. a frame of
    /// a transfer syntax this build cannot decode (422... answered as 406 by
    /// callers that negotiate; here it is the server's limitation: 501).
    #[error("cannot render: {0}")]
    CannotRender(String),
    /// The index, catalog or object store is not available (503).
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::CannotRender(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<pacs_archive::ArchiveError> for ApiError {
    fn from(e: pacs_archive::ArchiveError) -> Self {
        use pacs_archive::ArchiveError as A;
        match e {
            A::InstanceNotFound(uid) => ApiError::NotFound(format!("instance {uid}")),
            A::Catalog(_) | A::CatalogWrite(_) | A::Store(_) | A::Io(_) => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<pacs_indexer::IndexError> for ApiError {
    fn from(e: pacs_indexer::IndexError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
        let mut response = (
            status,
            axum::Json(serde_json::json!({
                "error": self.to_string(),
                "status": status.as_u16(),
            })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"pacs\""),
            );
        }
        response
    }
}
