//! Bearer tokens of the HTTP API, stored as SHA-256 hashes only. Making and
//! checking tokens is the viewer API's business; the catalog keeps the rows.

use sqlx::Row;

use super::{Catalog, execute_numbered, now_rfc3339, query_one};
use crate::error::ArchiveError;

/// What a token lets its holder do. The policy lives in the viewer API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRole {
    Admin,
    Clinician,
}

impl TokenRole {
    pub fn parse(value: &str) -> Option<TokenRole> {
        match value {
            "admin" => Some(TokenRole::Admin),
            "clinician" => Some(TokenRole::Clinician),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Clinician => "clinician",
        }
    }
}

/// One issued token (without the secret, which is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub role: TokenRole,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

fn token_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ApiToken, ArchiveError> {
    let role: String = row.try_get("role")?;
    Ok(ApiToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: TokenRole::parse(&role).ok_or_else(|| {
            ArchiveError::CatalogWrite(format!("api_tokens: unknown role {role:?}"))
        })?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Catalog {
    /// Record a new token by the SHA-256 (hex) of its secret.
    pub async fn insert_api_token(
        &self,
        name: &str,
        role: TokenRole,
        token_hash: &str,
    ) -> Result<ApiToken, ArchiveError> {
        let (name, token_hash, created_at) =
            (name.to_owned(), token_hash.to_owned(), now_rfc3339());
        self.write_job(move |conn| {
            let id = query_one(
                conn,
                "INSERT INTO api_tokens (name, role, token_hash, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&name, &role.name(), &token_hash, &created_at],
                "a new token",
            )?;
            Ok(ApiToken {
                id,
                name,
                role,
                created_at,
                revoked_at: None,
            })
        })
        .await
    }

    /// The live (not revoked) token with this hash, if any.
    pub async fn api_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<ApiToken>, ArchiveError> {
        let row = sqlx::query(
            "SELECT id, name, role, created_at, revoked_at FROM api_tokens \
             WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Every token, oldest first.
    pub async fn api_tokens(&self) -> Result<Vec<ApiToken>, ArchiveError> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revoke every live token with this name; returns how many.
    pub async fn revoke_api_tokens(&self, name: &str) -> Result<u64, ArchiveError> {
        let (name, now) = (name.to_owned(), now_rfc3339());
        self.write_job(move |conn| {
            execute_numbered(
                conn,
                "UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
                &[&now, &name],
            )
        })
        .await
    }
}
