//! The one place where outcomes become DIMSE statuses (PS3.7 Annex C,
//! PS3.4 B.2.3 for the Storage Service Class).
//!
//! C-STORE statuses of PS3.4 Table B.2-1: Success 0000; Refused: Out of
//! Resources A7xx; Error: Data Set does not match SOP Class A9xx; Error:
//! Cannot understand Cxxx; plus the general ones of PS3.7 (0122 SOP class not
//! supported, 0211 unrecognized operation...). A storage SCU retries A7xx
//! later and gives up on A9xx/Cxxx, so the family says whether resending can
//! help: only a refusal of the archive itself (store or catalog down) is A7xx.

use pacs_archive::{IngestReceipt, RefusalReason};

use crate::dimse::Command;

pub const SUCCESS: u16 = 0x0000;
/// Refused: Out of Resources (PS3.4 B.2.3). Transient: the SCU may retry.
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: Data Set does not match SOP Class (PS3.4 B.2.3).
pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
/// Error: Cannot understand (PS3.4 B.2.3).
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// Error: Cannot understand, sub-code of ours: the SOP Instance UID is
/// already stored with different bytes and replacement is disabled.
///
/// Why Cxxx: PS3.4 B.2.3 leaves a storage SCP three failure families. A7xx
/// would tell the modality to retry, which cannot succeed and would loop;
/// A9xx says the data set violates its IOD, which is false (the object may
/// be perfectly valid). 0111 "Duplicate SOP Instance" of PS3.7 is defined
/// for N-CREATE only and not listed for C-STORE-RSP. What remains is the
/// permanent "cannot understand" family; the Error Comment says why, and the
/// distinct sub-code lets an operator grep for it.
pub const CONFLICTING_INSTANCE: u16 = 0xC001;
/// Refused: SOP Class not supported (PS3.7 C.5.? / 9.1.1.1.9).
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Pending: matches are continuing (PS3.4 C.4.1.1.4).
pub const PENDING: u16 = 0xFF00;
/// Pending, with a warning that optional keys were not supported.
pub const PENDING_WARNING: u16 = 0xFF01;
/// Warning: sub-operations complete, one or more failures or warnings
/// (PS3.4 Tables C.4-2 and C.4-3).
pub const SUB_OPERATIONS_WITH_FAILURES: u16 = 0xB000;
/// Refused: out of resources, unable to perform sub-operations (PS3.4
/// Tables C.4-2 and C.4-3); also the final status when every sub-operation
/// failed (see [`retrieve_final_status`]).
pub const UNABLE_TO_PERFORM_SUB_OPERATIONS: u16 = 0xA702;
/// Refused: Move Destination unknown (PS3.4 C.4.2.1.5).
pub const MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;
/// Cancel: matching terminated due to a C-CANCEL.
pub const CANCEL: u16 = 0xFE00;
/// Unrecognized operation (PS3.7 C.4.2).
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;

/// A status with its Error Comment (LO, at most 64 characters) for failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub comment: Option<String>,
}

impl Status {
    pub fn success() -> Self {
        Status {
            code: SUCCESS,
            comment: None,
        }
    }

    pub fn failure(code: u16, comment: impl AsRef<str>) -> Self {
        Status {
            code,
            comment: Some(error_comment(comment.as_ref())),
        }
    }

    pub fn is_success(&self) -> bool {
        self.code == SUCCESS
    }
}

/// A response to `request` carrying `status`, with its Error Comment when
/// there is one: how every refusal of a service goes on the wire.
pub fn response(request: &Command, command_field: u16, status: &Status) -> Command {
    let mut rsp = Command::response_to(request, command_field, status.code);
    if let Some(comment) = &status.comment {
        rsp.set_text(crate::dimse::tag::ERROR_COMMENT, comment);
    }
    rsp
}

/// The final status of a C-GET or C-MOVE once its C-STORE sub-operations
/// have run (or were cancelled).
///
/// PS3.4 C.4.2.3.1 (C-MOVE) and C.4.3.3.1 (C-GET): the final response is
/// Success, Warning, Failure or Refused and carries the Completed, Failed
/// and Warning counts; C.4.2.2.1 / C.4.3.2.1 give the meaning the SCU reads
/// into it: Success when every sub-operation succeeded, Warning (B000) when
/// one or more failed or had a warning (or all had a warning), Failure or
/// Refused when all were unsuccessful. The only Failure/Refused code of
/// Tables C.4-2 / C.4-3 about sub-operations is A702 "Refused: Out of
/// Resources - Unable to perform sub-operations" (also what DCMTK's own
/// Q/R SCP answers when all fail); a cancelled operation is FE00 whatever
/// the counts (C.4.2.3.1: "status of Canceled").
pub fn retrieve_final_status(
    completed: usize,
    failed: usize,
    warning: usize,
    cancelled: bool,
) -> u16 {
    if cancelled {
        CANCEL
    } else if failed == 0 && warning == 0 {
        SUCCESS
    } else if completed + warning == 0 {
        UNABLE_TO_PERFORM_SUB_OPERATIONS
    } else {
        SUB_OPERATIONS_WITH_FAILURES
    }
}

/// Error Comment is LO: 64 characters, no backslash or control characters.
fn error_comment(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\\' || c.is_control() { ' ' } else { c })
        .take(64)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// The C-STORE-RSP status for an ingest receipt. Success only for receipts
/// whose instance is durable (stored, identical duplicate, replaced).
pub fn store_status(receipt: &IngestReceipt) -> Status {
    match receipt {
        IngestReceipt::Stored(_) | IngestReceipt::Duplicate(_) | IngestReceipt::Replaced(_) => {
            Status::success()
        }
        IngestReceipt::Refused(refusal) => refusal_status(&refusal.reason),
    }
}

fn refusal_status(reason: &RefusalReason) -> Status {
    match reason {
        RefusalReason::Conflict { .. } => Status::failure(
            CONFLICTING_INSTANCE,
            "SOP Instance UID already stored with different content",
        ),
        // Missing or malformed Type 1 attributes: the data set was read but
        // does not satisfy its IOD.
        RefusalReason::MissingAttribute(attribute) => Status::failure(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            format!("missing or empty {attribute}"),
        ),
        RefusalReason::MalformedUid { attribute, .. } => Status::failure(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            format!("{attribute} is not a valid UID"),
        ),
        // The bytes could not be read at all.
        RefusalReason::Empty => Status::failure(CANNOT_UNDERSTAND, "empty data set"),
        RefusalReason::NotDicom(_) | RefusalReason::Unparseable(_) => {
            Status::failure(CANNOT_UNDERSTAND, "data set cannot be parsed")
        }
        // Only STOW-RS to /studies/{study} names a study; listed for
        // completeness.
        RefusalReason::WrongStudy { .. } => Status::failure(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "object of another study than requested",
        ),
        RefusalReason::UnknownTransferSyntax(_) => Status::failure(
            CANNOT_UNDERSTAND,
            "transfer syntax not known to the archive",
        ),
        RefusalReason::StoreUnavailable(_) => {
            Status::failure(OUT_OF_RESOURCES, "object store unavailable, retry later")
        }
        RefusalReason::CatalogUnavailable(_) => {
            Status::failure(OUT_OF_RESOURCES, "catalog unavailable, retry later")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacs_archive::{Refusal, StoredInstance};

    fn refused(reason: RefusalReason) -> IngestReceipt {
        IngestReceipt::Refused(Refusal {
            reason,
            sop_class_uid: None,
            sop_instance_uid: None,
        })
    }

    #[test]
    fn receipts_map_to_the_documented_statuses() {
        let instance = StoredInstance {
            sop_class_uid: "1.2".into(),
            sop_instance_uid: "1.2.3".into(),
            study_instance_uid: "1".into(),
            series_instance_uid: "2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2".into(),
            sha256: "00".into(),
            original_size: 1,
            stored_size: 1,
            change_seq: None,
        };
        for ok in [
            IngestReceipt::Stored(instance.clone()),
            IngestReceipt::Duplicate(instance.clone()),
            IngestReceipt::Replaced(instance),
        ] {
            assert_eq!(store_status(&ok), Status::success());
        }
        let code = |r| store_status(&refused(r)).code;
        assert_eq!(
            code(RefusalReason::Conflict {
                sop_instance_uid: "1".into(),
                stored_sha256: "a".into(),
                received_sha256: "b".into()
            }),
            CONFLICTING_INSTANCE
        );
        assert_eq!(code(RefusalReason::Unparseable("x".into())), 0xC000);
        assert_eq!(code(RefusalReason::NotDicom("x".into())), 0xC000);
        assert_eq!(
            code(RefusalReason::MissingAttribute("StudyInstanceUID")),
            0xA900
        );
        assert_eq!(
            code(RefusalReason::MalformedUid {
                attribute: "SOPInstanceUID",
                value: "x".into(),
                problem: "bad"
            }),
            0xA900
        );
        assert_eq!(code(RefusalReason::StoreUnavailable("down".into())), 0xA700);
        assert_eq!(
            code(RefusalReason::CatalogUnavailable("down".into())),
            0xA700
        );
        for r in [
            RefusalReason::Empty,
            RefusalReason::UnknownTransferSyntax("1.2".into()),
            RefusalReason::Conflict {
                sop_instance_uid: "1".into(),
                stored_sha256: "a".into(),
                received_sha256: "b".into(),
            },
        ] {
            let s = store_status(&refused(r));
            assert!(!s.is_success());
            assert!(s.comment.unwrap().len() <= 64);
        }
    }

    #[test]
    fn retrieve_final_statuses_follow_ps3_4_c_4_2_3_1() {
        // (completed, failed, warning, cancelled)
        assert_eq!(retrieve_final_status(0, 0, 0, false), SUCCESS);
        assert_eq!(retrieve_final_status(3, 0, 0, false), SUCCESS);
        assert_eq!(retrieve_final_status(2, 1, 0, false), 0xB000);
        assert_eq!(retrieve_final_status(2, 0, 1, false), 0xB000);
        // All with a warning: Warning, not Failure.
        assert_eq!(retrieve_final_status(0, 0, 2, false), 0xB000);
        assert_eq!(retrieve_final_status(0, 1, 1, false), 0xB000);
        // All failed.
        assert_eq!(retrieve_final_status(0, 3, 0, false), 0xA702);
        assert_eq!(retrieve_final_status(1, 1, 0, true), CANCEL);
    }

    #[test]
    fn refusals_carry_their_error_comment() {
        let mut rq = Command::new(0x0021);
        rq.set_us(crate::dimse::tag::MESSAGE_ID, 7);
        let rsp = response(&rq, 0x8021, &Status::failure(0xA801, "unknown"));
        assert_eq!(rsp.us(crate::dimse::tag::STATUS), Some(0xA801));
        assert_eq!(
            rsp.us(crate::dimse::tag::MESSAGE_ID_BEING_RESPONDED_TO),
            Some(7)
        );
        assert_eq!(rsp.text(crate::dimse::tag::ERROR_COMMENT), Some("unknown"));
        let ok = response(&rq, 0x8021, &Status::success());
        assert_eq!(ok.text(crate::dimse::tag::ERROR_COMMENT), None);
    }

    #[test]
    fn error_comments_are_valid_lo() {
        let s = Status::failure(0xC000, format!("a\\b\nc{}", "x".repeat(100)));
        let c = s.comment.unwrap();
        assert_eq!(c.chars().count(), 64);
        assert!(!c.contains('\\') && !c.contains('\n'));
    }
}
