-- Bearer tokens of the HTTP API. Only the SHA-256 of a token is kept: tokens
-- are 256 random bits, so a fast hash is enough (passwords, later, get argon2).
CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
