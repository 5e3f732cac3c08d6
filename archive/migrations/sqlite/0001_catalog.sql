-- The catalog of the archive: what is stored, where, and the change feed.
-- Portable SQL: the PostgreSQL migration differs only in the row-id types
-- (BIGSERIAL / BIGINT GENERATED ALWAYS AS IDENTITY).

CREATE TABLE patients (
    id                   INTEGER PRIMARY KEY,
    -- Patient ID within its issuer; for an empty Patient ID, name and birth date.
    patient_key          TEXT NOT NULL UNIQUE,
    patient_id           TEXT,
    issuer_of_patient_id TEXT,
    patient_name         TEXT,
    birth_date           TEXT,
    sex                  TEXT,
    created_at           TEXT NOT NULL
);

CREATE TABLE studies (
    study_instance_uid       TEXT PRIMARY KEY,
    patient_pk               INTEGER NOT NULL REFERENCES patients (id),
    study_date               TEXT,
    study_time               TEXT,
    accession_number         TEXT,
    study_id                 TEXT,
    study_description        TEXT,
    referring_physician_name TEXT,
    created_at               TEXT NOT NULL
);
CREATE INDEX studies_patient ON studies (patient_pk);
CREATE INDEX studies_date ON studies (study_date);
CREATE INDEX studies_accession ON studies (accession_number);

CREATE TABLE series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL REFERENCES studies (study_instance_uid),
    modality            TEXT,
    series_number       INTEGER,
    series_description  TEXT,
    body_part_examined  TEXT,
    series_date         TEXT,
    created_at          TEXT NOT NULL
);
CREATE INDEX series_study ON series (study_instance_uid);

-- One row per distinct stored object (content address = SHA-256 of the
-- uncompressed Part-10 bytes).
CREATE TABLE blobs (
    sha256        TEXT PRIMARY KEY,
    blob_key      TEXT NOT NULL,
    compression   TEXT NOT NULL,
    original_size INTEGER NOT NULL,
    stored_size   INTEGER NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE instances (
    sop_instance_uid       TEXT PRIMARY KEY,
    series_instance_uid    TEXT NOT NULL REFERENCES series (series_instance_uid),
    study_instance_uid     TEXT NOT NULL REFERENCES studies (study_instance_uid),
    sop_class_uid          TEXT NOT NULL,
    instance_number        INTEGER,
    content_date           TEXT,
    num_rows               INTEGER,
    num_columns            INTEGER,
    number_of_frames       INTEGER,
    transfer_syntax_uid    TEXT NOT NULL,
    specific_character_set TEXT,
    sha256                 TEXT NOT NULL REFERENCES blobs (sha256),
    received_at            TEXT NOT NULL,
    source                 TEXT NOT NULL,
    -- PS3.18 F.2 DICOM JSON of the data set, without bulk data.
    metadata               TEXT NOT NULL
);
CREATE INDEX instances_series ON instances (series_instance_uid);
CREATE INDEX instances_study ON instances (study_instance_uid);
CREATE INDEX instances_sha256 ON instances (sha256);

-- The change feed: a monotonically increasing sequence that the indexer,
-- the thumbnail worker and other followers read from where they stopped.
CREATE TABLE changes (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    kind                TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    recorded_at         TEXT NOT NULL
);
