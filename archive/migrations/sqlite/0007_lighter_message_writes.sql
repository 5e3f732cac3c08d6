-- Fewer pages written per recorded message (each page a WAL frame that
-- the commit writes and syncs; a lab message used to touch about 21).

-- The outbox is keyed by the message it belongs to: rows are appended in
-- id order instead of landing on a random page of a SHA-256 index, and
-- the mover points each message at its pack by id, so `messages` needs no
-- index on sha256 any more. Rows of messages that share content (if any)
-- each get their own copy.
CREATE TABLE message_outbox_next (
    message_id INTEGER PRIMARY KEY,
    -- zstd-compressed, as the object store will hold them.
    data       BLOB NOT NULL,
    created_at TEXT NOT NULL
);
INSERT INTO message_outbox_next (message_id, data, created_at)
    SELECT m.id, o.data, o.created_at FROM message_outbox o
    JOIN messages m ON m.sha256 = o.sha256 AND m.blob_offset IS NULL AND m.format <> 'dicom';
DROP TABLE message_outbox;
ALTER TABLE message_outbox_next RENAME TO message_outbox;
DROP INDEX messages_sha256;

-- Lab reports have no study and often no accession number: index only
-- the reports that have one (every query on these columns looks for a
-- value, which implies NOT NULL, so the planner still uses them).
DROP INDEX reports_accession;
CREATE INDEX reports_accession ON reports (accession_number) WHERE accession_number IS NOT NULL;
DROP INDEX reports_study;
CREATE INDEX reports_study ON reports (study_instance_uid) WHERE study_instance_uid IS NOT NULL;

-- A patient's results by patient alone: a new panel's results land at the
-- end of the patient's range (one page) instead of at the end of each
-- test's range (up to one page per test; about four per message measured).
-- Every query by patient and code reads the patient's range and filters.
DROP INDEX observations_patient_code;
CREATE INDEX observations_patient ON observations (patient_pk);

-- The change feed without AUTOINCREMENT: its sqlite_sequence row was one
-- more page per commit. Rows are never deleted, so the next seq is still
-- one more than the newest. The table is rebuilt with every seq kept.
CREATE TABLE changes_next (
    seq                 INTEGER PRIMARY KEY,
    kind                TEXT NOT NULL,
    sop_instance_uid    TEXT,
    series_instance_uid TEXT,
    study_instance_uid  TEXT,
    report_id           INTEGER,
    recorded_at         TEXT NOT NULL
);
INSERT INTO changes_next (seq, kind, sop_instance_uid, series_instance_uid, study_instance_uid, report_id, recorded_at)
    SELECT seq, kind, sop_instance_uid, series_instance_uid, study_instance_uid, report_id, recorded_at FROM changes;
DROP TABLE changes;
ALTER TABLE changes_next RENAME TO changes;
