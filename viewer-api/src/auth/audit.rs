//! The audit hook: every read and search that the authorisation layer lets
//! through is reported, after the response, with who did it, what, on which
//! patient or study, and the answer's status. The archive's audit log plugs
//! in here as another [`AuditSink`]; until then the events go to the
//! operator's log (target `audit`).

use axum::http::Method;

use super::{Action, Principal, Target};

/// One audited request.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub principal: &'a Principal,
    pub action: Action,
    pub method: &'a Method,
    /// The matched route pattern (`/api/patients/{patient}/results`).
    pub route: &'a str,
    /// The request path as sent (without the query string).
    pub path: &'a str,
    pub target: &'a Target,
    /// The HTTP status of the answer.
    pub status: u16,
}

impl AuditEvent<'_> {
    /// Whether this request is audited: reads and searches (what a patient
    /// privacy officer asks about), whatever their outcome, refusals by the
    /// policy included.
    pub fn is_audited(action: Action) -> bool {
        matches!(action, Action::Read | Action::Search)
    }
}

/// What a request touched, when its path does not say (a FHIR read by row
/// id learns its patient from the record): a handler adds it to its
/// response's extensions and the audit event names it instead of the path's
/// target.
#[derive(Debug, Clone)]
pub struct AuditTarget(pub Target);

/// Where audit events go. Called on the request's task after the response
/// is built: keep it quick (queue, don't write synchronously to a slow
/// store).
pub trait AuditSink: Send + Sync {
    fn record(&self, event: &AuditEvent<'_>);
}

/// The default sink: one structured log line per event.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogAudit;

impl AuditSink for LogAudit {
    fn record(&self, e: &AuditEvent<'_>) {
        tracing::info!(
            target: "audit",
            principal = %e.principal.name,
            token_id = e.principal.token_id,
            action = ?e.action,
            method = %e.method,
            route = e.route,
            path = e.path,
            patient = e.target.patient.as_deref().unwrap_or(""),
            study = e.target.study.as_deref().unwrap_or(""),
            status = e.status,
            "audit"
        );
    }
}
