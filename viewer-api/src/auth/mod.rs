//! Authentication and authorisation: the one layer every route passes.
//!
//! A request names who it is with a bearer token (`Authorization: Bearer
//! pacs_...`); the catalog keeps only the SHA-256 of each token. The layer
//! then asks the [`Policy`] whether this principal may do the route's
//! [`Action`] on the route's [`Target`] (the study in the path, when there
//! is one). Routes missing from the action table are refused: deny by
//! default. Per-study and per-patient rules (patients, share links) plug in
//! as a `Policy` and as a [`Scope`] that searches apply, without touching
//! the handlers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use pacs_archive::catalog::{Catalog, TokenRole};
use rand::RngCore;
use sha2::{Digest, Sha256};

mod audit;
pub use audit::{AuditEvent, AuditSink, AuditTarget, LogAudit};

use crate::error::ApiError;
use crate::state::AppState;

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: TokenRole,
    pub token_id: i64,
}

/// What a route does, for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Study, series or instance searches (QIDO-RS).
    Search,
    /// Reading stored objects, metadata, pixels.
    Read,
    /// Storing objects (STOW-RS).
    Store,
    /// Operating the archive (metrics, administration).
    Administer,
}

/// What a request touches, as far as its path tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub study: Option<String>,
    /// The Patient ID in the path (`/api/patients/{patient}/...`).
    pub patient: Option<String>,
}

/// The rows a principal may see in search answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    All,
    /// Only studies of these patient IDs (a patient's own results).
    Patients(Vec<String>),
}

/// The authorisation decision, one place for every route.
pub trait Policy: Send + Sync + 'static {
    /// `Ok(())` to allow, or the reason for a 403.
    fn decide(&self, who: &Principal, action: Action, target: &Target) -> Result<(), String>;

    /// What searches by `who` may return.
    fn scope(&self, who: &Principal) -> Scope;
}

/// The roles of this release: an admin may do everything; a clinician may
/// search, read and store, not administer.
#[derive(Debug, Default)]
pub struct RolePolicy;

impl Policy for RolePolicy {
    fn decide(&self, who: &Principal, action: Action, _target: &Target) -> Result<(), String> {
        match (who.role, action) {
            (TokenRole::Admin, _) => Ok(()),
            (TokenRole::Clinician, Action::Search | Action::Read | Action::Store) => Ok(()),
            (TokenRole::Clinician, Action::Administer) => Err(format!(
                "token {:?} (clinician) may not administer the archive",
                who.name
            )),
        }
    }

    fn scope(&self, _who: &Principal) -> Scope {
        Scope::All
    }
}

/// The action of a route (method and matched path), or `None` for a route
/// the table does not know, which is then refused.
pub fn action_for(method: &Method, route: &str) -> Option<Action> {
    let reading = *method == Method::GET || *method == Method::HEAD;
    if route == "/metrics" {
        return reading.then_some(Action::Administer);
    }
    if route == "/api/search" {
        return reading.then_some(Action::Search);
    }
    if route == "/wado" || route.starts_with("/api/") {
        return reading.then_some(Action::Read);
    }
    if let Some(rest) = route.strip_prefix("/fhir/r4") {
        return match rest {
            "" | "/{type}" if *method == Method::POST => Some(Action::Store),
            "/metadata" | "/{type}/{id}" if reading => Some(Action::Read),
            "/{type}" if reading => Some(Action::Search),
            _ => None,
        };
    }
    let rest = route.strip_prefix("/dicom-web")?;
    if *method == Method::POST {
        return matches!(rest, "/studies" | "/studies/{study}").then_some(Action::Store);
    }
    if !reading {
        return None;
    }
    let search = matches!(
        rest,
        "/studies"
            | "/series"
            | "/instances"
            | "/studies/{study}/series"
            | "/studies/{study}/instances"
            | "/studies/{study}/series/{series}/instances"
    );
    Some(if search { Action::Search } else { Action::Read })
}

/// Length of a token's random part, bytes.
const TOKEN_BYTES: usize = 32;
const TOKEN_PREFIX: &str = "pacs_";

/// SHA-256 (hex) of a token, as the catalog keeps it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Make a new token, record its hash, and return the token (shown once).
pub async fn issue_token(
    catalog: &Catalog,
    name: &str,
    role: TokenRole,
) -> Result<String, ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::BadRequest("a token needs a name".into()));
    }
    let mut secret = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    catalog
        .insert_api_token(name.trim(), role, &token_hash(&token))
        .await?;
    Ok(token)
}

/// How long a checked token is trusted without asking the catalog again
/// (a revocation takes effect within this time).
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);
const TOKEN_CACHE_MAX: usize = 10_000;

/// Recently checked tokens, by hash.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl TokenCache {
    /// The principal behind `token`, or `Unauthenticated`.
    pub async fn authenticate(
        &self,
        catalog: &Catalog,
        token: &str,
    ) -> Result<Principal, ApiError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return Err(ApiError::Unauthenticated(
                "the bearer token is not valid".into(),
            ));
        }
        let hash = token_hash(token);
        if let Some((p, at)) = self.lock().get(&hash)
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(p.clone());
        }
        let found = catalog
            .api_token_by_hash(&hash)
            .await?
            .ok_or_else(|| ApiError::Unauthenticated("the bearer token is not valid".into()))?;
        let principal = Principal {
            name: found.name,
            role: found.role,
            token_id: found.id,
        };
        let mut entries = self.lock();
        if entries.len() >= TOKEN_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (principal.clone(), Instant::now()));
        Ok(principal)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Principal, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The bearer token of a request, from `Authorization: Bearer ...`.
fn bearer(request: &Request) -> Result<&str, ApiError> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthenticated("no bearer token".into()))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the Authorization header is not text".into()))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(|| {
        ApiError::Unauthenticated("expected \"Authorization: Bearer <token>\"".into())
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthenticated(format!(
            "authorization scheme {scheme:?} is not supported; use Bearer"
        )));
    }
    Ok(token.trim())
}

/// The layer: authenticate, find the route's action and target, ask the
/// policy, and hand the principal to the handler (as an extension). A
/// refusal is answered in the dialect of the path (an OperationOutcome
/// under `/fhir/`). Reads and searches are audited once answered, refused
/// ones too (when the caller is known).
pub async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let (response, audit) = match admit(&state, request).await {
        Ok((request, audit)) => (next.run(request).await, audit),
        Err((e, audit)) => (crate::fhir::error::api_error_for(&path, e), audit),
    };
    if let Some(a) = audit {
        let target = response
            .extensions()
            .get::<AuditTarget>()
            .map_or(&a.target, |t| &t.0);
        state.audit().record(&AuditEvent {
            principal: &a.principal,
            action: a.action,
            method: &a.method,
            route: &a.route,
            path: &a.path,
            target,
            status: response.status().as_u16(),
        });
    }
    response
}

/// A request to audit once answered.
struct Audited {
    principal: Principal,
    action: Action,
    method: Method,
    route: String,
    path: String,
    target: Target,
}

/// The admitted request, or the refusal; with what to audit either way.
type Admission = Result<(Request, Option<Audited>), (ApiError, Option<Audited>)>;

async fn admit(state: &AppState, request: Request) -> Admission {
    let token = bearer(&request).map_err(|e| (e, None))?;
    let principal = state
        .tokens()
        .authenticate(state.archive().catalog(), token)
        .await
        .map_err(|e| (e, None))?;
    let (mut parts, body) = request.into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, state)
        .await
        .ok();
    let mut request = Request::from_parts(parts, body);
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map(MatchedPath::as_str).unwrap_or("");
    let Some(action) = action_for(request.method(), route) else {
        let e = ApiError::Forbidden(format!(
            "{} {} is not an allowed operation",
            request.method(),
            route
        ));
        return Err((e, None));
    };
    let param = |wanted: &str| {
        params.as_ref().and_then(|p| {
            p.iter()
                .find(|(name, _)| *name == wanted)
                .map(|(_, value)| value.to_owned())
        })
    };
    let target = Target {
        study: param("study"),
        patient: param("patient"),
    };
    let decision = state.policy().decide(&principal, action, &target);
    let audit = AuditEvent::is_audited(action).then(|| Audited {
        principal: principal.clone(),
        action,
        method: request.method().clone(),
        route: route.to_owned(),
        path: request.uri().path().to_owned(),
        target,
    });
    if let Err(why) = decision {
        return Err((ApiError::Forbidden(why), audit));
    }
    request.extensions_mut().insert(principal);
    Ok((request, audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_actions_and_unknown_ones_none() {
        assert_eq!(
            action_for(&Method::GET, "/dicom-web/studies"),
            Some(Action::Search)
        );
        assert_eq!(
            action_for(&Method::POST, "/dicom-web/studies"),
            Some(Action::Store)
        );
        assert_eq!(
            action_for(&Method::GET, "/dicom-web/studies/{study}/metadata"),
            Some(Action::Read)
        );
        assert_eq!(
            action_for(&Method::GET, "/metrics"),
            Some(Action::Administer)
        );
        assert_eq!(
            action_for(&Method::DELETE, "/dicom-web/studies/{study}"),
            None
        );
        assert_eq!(action_for(&Method::GET, "/admin/anything"), None);
        assert_eq!(
            action_for(&Method::GET, "/api/patients/{patient}/results"),
            Some(Action::Read)
        );
        assert_eq!(
            action_for(&Method::POST, "/api/patients/{patient}/results"),
            None
        );
        assert_eq!(action_for(&Method::POST, "/fhir/r4"), Some(Action::Store));
        assert_eq!(
            action_for(&Method::POST, "/fhir/r4/{type}"),
            Some(Action::Store)
        );
        assert_eq!(
            action_for(&Method::GET, "/fhir/r4/{type}"),
            Some(Action::Search)
        );
        assert_eq!(
            action_for(&Method::GET, "/fhir/r4/{type}/{id}"),
            Some(Action::Read)
        );
        assert_eq!(
            action_for(&Method::GET, "/fhir/r4/metadata"),
            Some(Action::Read)
        );
        assert_eq!(action_for(&Method::GET, "/fhir/r4"), None);
        assert_eq!(action_for(&Method::DELETE, "/fhir/r4/{type}/{id}"), None);
    }

    #[test]
    fn clinicians_do_not_administer() {
        let who = Principal {
            name: "dr".into(),
            role: TokenRole::Clinician,
            token_id: 1,
        };
        let t = Target::default();
        assert!(RolePolicy.decide(&who, Action::Read, &t).is_ok());
        assert!(RolePolicy.decide(&who, Action::Administer, &t).is_err());
    }

    #[test]
    fn token_hashes_are_stable_hex() {
        assert_eq!(token_hash("pacs_x").len(), 64);
        assert_eq!(token_hash("pacs_x"), token_hash("pacs_x"));
        assert_ne!(token_hash("pacs_x"), token_hash("pacs_y"));
    }
}
