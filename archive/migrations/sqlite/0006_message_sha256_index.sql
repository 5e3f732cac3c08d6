-- The outbox mover finds a message by the SHA-256 of its bytes when it
-- records where its pack put them; without an index that was a scan of
-- every message for each one moved.
CREATE INDEX messages_sha256 ON messages (sha256);
