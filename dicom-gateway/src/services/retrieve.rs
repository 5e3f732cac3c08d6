//! What C-GET ([`super::get`]) and C-MOVE ([`super::move_`]) share: the
//! instances an identifier selects, reading a stored data set back (in its
//! stored transfer syntax or converted, see [`super::transcode`]), the
//! C-STORE-RQ of a sub-operation, the sub-operation counts and the
//! responses carrying them, and the Failed SOP Instance UID List.
//!
//! An instance goes out on a presentation context accepted for its SOP
//! class: in its stored transfer syntax when accepted, else converted
//! losslessly to an accepted native one; an instance for which neither is
//! possible is a failed sub-operation (PS3.4 C.4.2.3.1: "A sub-operation is
//! considered Failed if the SCP is unable to negotiate an appropriate
//! presentation context for a given stored SOP Instance").

use crate::association::Context;
use crate::dimse::{Command, Status, field, status, tag};
use crate::server::Gateway;

/// One instance to send in a C-STORE sub-operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    /// The transfer syntax it is stored in.
    pub transfer_syntax: String,
}

/// The instances a C-GET or C-MOVE identifier selects: the one query both
/// retrieve services share.
pub(crate) async fn instances(
    gateway: &Gateway,
    context: &Context,
    identifier: Option<&[u8]>,
    operation: &str,
) -> Result<Vec<Instance>, Status> {
    let (sql, binds) = crate::services::find::retrieve_query(
        &context.abstract_syntax,
        identifier.unwrap_or_default(),
        &context.transfer_syntax,
    )?;
    let rows = gateway
        .archive
        .catalog()
        .select_text_rows(&sql, &binds, 1_000_000)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "{operation}: catalog query failed");
            Status::failure(
                status::UNABLE_TO_PERFORM_SUB_OPERATIONS,
                "catalog unavailable",
            )
        })?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match (r.first(), r.get(1), r.get(2)) {
            (Some(Some(u)), Some(Some(c)), Some(Some(t))) => Some(Instance {
                sop_instance_uid: u.clone(),
                sop_class_uid: c.clone(),
                transfer_syntax: t.clone(),
            }),
            _ => None,
        })
        .collect())
}

/// How one sub-operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Warning,
    Failed(String),
}

impl Outcome {
    /// The outcome of a sub-operation from the status of its C-STORE-RSP
    /// (`who` names the peer that answered, for the log).
    pub fn of_store_status(code: u16, who: &str) -> Outcome {
        match code {
            0x0000 => Outcome::Completed,
            c if c & 0xF000 == 0xB000 => Outcome::Warning,
            c => Outcome::Failed(format!("{who} answered {c:#06X}")),
        }
    }
}

/// The sub-operation counts of one C-GET or C-MOVE, and the failed
/// instances by SOP Instance UID.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub completed: usize,
    pub warning: usize,
    pub failed: Vec<String>,
}

impl Counts {
    /// Count one sub-operation; failures are logged with their reason.
    pub fn record(&mut self, operation: &str, sop_instance_uid: &str, outcome: Outcome) {
        match outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Warning => self.warning += 1,
            Outcome::Failed(why) => {
                tracing::warn!(sop_instance_uid, reason = %why, "{operation} sub-operation failed");
                self.failed.push(sop_instance_uid.to_owned());
            }
        }
    }

    pub fn processed(&self) -> usize {
        self.completed + self.warning + self.failed.len()
    }

    /// The final status once the sub-operations ran (see
    /// [`status::retrieve_final_status`]).
    pub fn final_status(&self, cancelled: bool) -> u16 {
        status::retrieve_final_status(self.completed, self.failed.len(), self.warning, cancelled)
    }

    /// Set the four sub-operation counts on a response.
    pub fn set_on(&self, rsp: &mut Command, remaining: usize) {
        rsp.set_us(tag::REMAINING_SUB_OPERATIONS, clamp(remaining))
            .set_us(tag::COMPLETED_SUB_OPERATIONS, clamp(self.completed))
            .set_us(tag::FAILED_SUB_OPERATIONS, clamp(self.failed.len()))
            .set_us(tag::WARNING_SUB_OPERATIONS, clamp(self.warning));
    }

    /// A pending response (FF00) with the counts so far.
    pub fn pending(&self, request: &Command, command_field: u16, remaining: usize) -> Command {
        let mut rsp = Command::response_to(request, command_field, status::PENDING);
        self.set_on(&mut rsp, remaining);
        rsp
    }

    /// The final response with `code` and the counts.
    pub fn final_response(
        &self,
        request: &Command,
        command_field: u16,
        code: u16,
        remaining: usize,
    ) -> Command {
        let mut rsp = Command::response_to(request, command_field, code);
        self.set_on(&mut rsp, remaining);
        rsp
    }
}

fn clamp(n: usize) -> u16 {
    n.min(0xFFFF) as u16
}

/// The data set of a stored instance, read back (hash verified) for a
/// C-STORE sub-operation of C-GET or C-MOVE.
pub(crate) async fn stored_data_set(gateway: &Gateway, uid: &str) -> Result<bytes::Bytes, String> {
    let bytes = gateway
        .archive
        .retrieve(uid)
        .await
        .map_err(|e| format!("cannot read it back: {e}"))?;
    let data_len = part10_data_set(&bytes)
        .ok_or("stored object has no readable meta group")?
        .len();
    Ok(bytes.slice(bytes.len() - data_len..))
}

/// The data set of a stored instance in `target`: the stored bytes when
/// `target` is its stored syntax, else converted (on the blocking pool).
pub(crate) async fn outgoing_data_set(
    gateway: &Gateway,
    instance: &Instance,
    target: &str,
) -> Result<bytes::Bytes, String> {
    if target == instance.transfer_syntax {
        return stored_data_set(gateway, &instance.sop_instance_uid).await;
    }
    let part10 = gateway
        .archive
        .retrieve(&instance.sop_instance_uid)
        .await
        .map_err(|e| format!("cannot read it back: {e}"))?;
    tracing::debug!(
        sop_instance_uid = %instance.sop_instance_uid,
        from = %instance.transfer_syntax,
        to = target,
        "retrieve: converting the stored transfer syntax"
    );
    super::transcode::convert_blocking(part10, instance.transfer_syntax.clone(), target.into())
        .await
        .map(bytes::Bytes::from)
        .map_err(|e| {
            format!(
                "cannot convert from {} to {target}: {e}",
                instance.transfer_syntax
            )
        })
}

/// The data set of a stored Part-10 object (after its meta group).
fn part10_data_set(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.get(128..132)? != b"DICM" {
        return None;
    }
    let group_length = u32::from_le_bytes(bytes.get(140..144)?.try_into().ok()?) as usize;
    bytes.get(144usize.checked_add(group_length)?..)
}

/// The C-STORE-RQ of one retrieve sub-operation.
pub(crate) fn sub_store_request(instance: &Instance, message_id: u16) -> Command {
    let mut rq = Command::new(field::C_STORE_RQ);
    rq.set_text(tag::AFFECTED_SOP_CLASS_UID, &instance.sop_class_uid)
        .set_us(tag::MESSAGE_ID, message_id)
        .set_us(tag::PRIORITY, 0)
        .set_us(
            tag::COMMAND_DATA_SET_TYPE,
            crate::dimse::command::DATA_SET_PRESENT,
        )
        .set_text(tag::AFFECTED_SOP_INSTANCE_UID, &instance.sop_instance_uid);
    rq
}

/// The identifier of a final C-GET or C-MOVE response: the Failed SOP
/// Instance UID List (0008,0058), in the transfer syntax of the request's
/// presentation context. `None` if that syntax cannot be written.
pub(crate) fn failed_uid_list(uids: &[String], transfer_syntax: &str) -> Option<Vec<u8>> {
    use dicom_encoding::TransferSyntaxIndex;
    let mut object = dicom_object::InMemDicomObject::new_empty();
    object.put_str(
        dicom_core::Tag(0x0008, 0x0058),
        dicom_core::VR::UI,
        uids.join("\\"),
    );
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(transfer_syntax)?;
    let mut out = Vec::new();
    object.write_dataset_with_ts(&mut out, ts).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_counts() {
        assert_eq!(Outcome::of_store_status(0, "peer"), Outcome::Completed);
        assert_eq!(Outcome::of_store_status(0xB007, "peer"), Outcome::Warning);
        assert_eq!(
            Outcome::of_store_status(0xA700, "peer"),
            Outcome::Failed("peer answered 0xA700".into())
        );
        let mut counts = Counts::default();
        counts.record("C-MOVE", "1.1", Outcome::Completed);
        counts.record("C-MOVE", "1.2", Outcome::Failed("no context".into()));
        counts.record("C-MOVE", "1.3", Outcome::Warning);
        assert_eq!(counts.processed(), 3);
        assert_eq!(counts.failed, ["1.2"]);
        assert_eq!(
            counts.final_status(false),
            status::SUB_OPERATIONS_WITH_FAILURES
        );
        let mut rq = Command::new(field::C_MOVE_RQ);
        rq.set_us(tag::MESSAGE_ID, 3);
        let rsp = counts.pending(&rq, field::C_MOVE_RSP, 2);
        assert_eq!(rsp.us(tag::STATUS), Some(status::PENDING));
        assert_eq!(rsp.us(tag::REMAINING_SUB_OPERATIONS), Some(2));
        assert_eq!(rsp.us(tag::COMPLETED_SUB_OPERATIONS), Some(1));
        assert_eq!(rsp.us(tag::FAILED_SUB_OPERATIONS), Some(1));
        assert_eq!(rsp.us(tag::WARNING_SUB_OPERATIONS), Some(1));
    }

    #[test]
    fn the_failed_uid_list_is_one_multi_valued_ui() {
        let bytes = failed_uid_list(&["1.2.3".into(), "1.2.45".into()], "1.2.840.10008.1.2")
            .expect("implicit VR LE");
        let object = dicom_object::InMemDicomObject::read_dataset_with_ts(
            bytes.as_slice(),
            &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        let list = object
            .element(dicom_core::Tag(0x0008, 0x0058))
            .unwrap()
            .to_multi_str()
            .unwrap()
            .iter()
            .map(|s| s.trim_end_matches('\0').to_owned())
            .collect::<Vec<_>>();
        assert_eq!(list, ["1.2.3", "1.2.45"]);
        assert!(failed_uid_list(&["1".into()], "1.2.3.4.unknown").is_none());
    }

    #[test]
    fn part10_data_set_skips_the_meta_group() {
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        // (0002,0000) UL 4 = 6, then 6 bytes of meta, then the data set.
        file.extend_from_slice(&[2, 0, 0, 0, b'U', b'L', 4, 0, 6, 0, 0, 0]);
        file.extend_from_slice(&[0xEE; 6]);
        file.extend_from_slice(b"DATA");
        assert_eq!(part10_data_set(&file), Some(&b"DATA"[..]));
        assert_eq!(part10_data_set(b"short"), None);
    }
}
