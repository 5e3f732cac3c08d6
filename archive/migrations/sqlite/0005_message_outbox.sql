-- Raw messages (HL7, FHIR) on their way to the object store. A message is
-- acknowledged once the transaction that records it commits; its
-- compressed bytes are part of that transaction (here), and a background
-- task then writes them to the object store under their content-addressed
-- key and deletes the row. Reads and `pacs verify` find a message's bytes
-- here until then.
CREATE TABLE message_outbox (
    sha256     TEXT PRIMARY KEY,
    blob_key   TEXT NOT NULL,
    -- zstd-compressed, as the object store will hold them.
    data       BLOB NOT NULL,
    created_at TEXT NOT NULL
);

-- Raw messages are written to the object store in packs: one object holds
-- many messages' compressed bytes back to back (a file per message made
-- file creation the cost of every message). A packed message's blob_key
-- names its pack and blob_offset where its bytes (stored_size of them)
-- start; NULL: the object is the message's alone.
ALTER TABLE messages ADD COLUMN blob_offset INTEGER;
