-- Lab results and reports that arrive as messages (HL7 v2 ORU, FHIR), one
-- model for both front doors. The raw message is stored like an image
-- (content-addressed, compressed, hashed) under messages/sha256/...

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    -- 'hl7v2' or 'fhir'.
    format        TEXT NOT NULL,
    message_type  TEXT NOT NULL,
    -- Who sent it (HL7: sending application and facility) and its control
    -- id: a message re-sent with both unchanged is the same message.
    sender        TEXT NOT NULL,
    control_id    TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    blob_key      TEXT NOT NULL,
    original_size INTEGER NOT NULL,
    stored_size   INTEGER NOT NULL,
    received_at   TEXT NOT NULL,
    source        TEXT NOT NULL,
    UNIQUE (sender, control_id)
);

-- Results are looked up by Patient ID (with or without its issuer).
CREATE INDEX patients_patient_id ON patients (patient_id);

-- One report / order group (HL7 OBR, FHIR DiagnosticReport).
CREATE TABLE reports (
    id                 INTEGER PRIMARY KEY,
    message_id         INTEGER NOT NULL REFERENCES messages (id),
    patient_pk         INTEGER NOT NULL REFERENCES patients (id),
    placer_number      TEXT,
    filler_number      TEXT,
    accession_number   TEXT,
    service_code       TEXT,
    service_display    TEXT,
    service_system     TEXT,
    observed_at        TEXT,
    status             TEXT,
    -- Narrative text (radiology reports), if any.
    report_text        TEXT,
    -- The imaging study it reports on, when known.
    study_instance_uid TEXT,
    created_at         TEXT NOT NULL
);
CREATE INDEX reports_patient ON reports (patient_pk);
CREATE INDEX reports_accession ON reports (accession_number);
CREATE INDEX reports_study ON reports (study_instance_uid);

-- One result (HL7 OBX, FHIR Observation). A correction does not overwrite:
-- the earlier row points at the one that superseded it.
CREATE TABLE observations (
    id              INTEGER PRIMARY KEY,
    report_id       INTEGER NOT NULL REFERENCES reports (id),
    patient_pk      INTEGER NOT NULL REFERENCES patients (id),
    code            TEXT,
    code_display    TEXT,
    code_system     TEXT,
    value_type      TEXT,
    value           TEXT,
    numeric_value   REAL,
    units           TEXT,
    reference_range TEXT,
    abnormal_flags  TEXT,
    status          TEXT,
    observed_at     TEXT,
    notes           TEXT,
    superseded_by   INTEGER REFERENCES observations (id),
    created_at      TEXT NOT NULL
);
CREATE INDEX observations_patient_code ON observations (patient_pk, code);
CREATE INDEX observations_report ON observations (report_id);
