ALTER TABLE reports ADD COLUMN sop_instance_uid TEXT;
