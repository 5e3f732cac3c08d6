-- Reports in the change feed, and reports that come from a stored DICOM
-- document (Structured Report, Encapsulated PDF).

-- The DICOM instance a report was extracted from, if any.
ALTER TABLE reports ADD COLUMN sop_instance_uid TEXT;

-- The change feed names either an instance (with its series and study) or
-- a report (with the study it is linked to, if any). SQLite cannot relax a
-- NOT NULL column in place: the table is rebuilt with its sequence kept
-- (nothing references it).
CREATE TABLE changes_next (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    kind                TEXT NOT NULL,
    sop_instance_uid    TEXT,
    series_instance_uid TEXT,
    study_instance_uid  TEXT,
    report_id           INTEGER,
    recorded_at         TEXT NOT NULL
);
INSERT INTO changes_next (seq, kind, sop_instance_uid, series_instance_uid, study_instance_uid, recorded_at)
    SELECT seq, kind, sop_instance_uid, series_instance_uid, study_instance_uid, recorded_at FROM changes;
DROP TABLE changes;
ALTER TABLE changes_next RENAME TO changes;
