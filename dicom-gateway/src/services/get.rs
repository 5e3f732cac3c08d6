//! C-GET SCP (PS3.4 C.4.3): every selected instance goes back as a C-STORE
//! sub-operation on the same association, on a context the peer accepted
//! for its SOP class: in its stored transfer syntax when accepted, else
//! converted losslessly to an accepted native syntax
//! ([`super::transcode`]); a pending response with the counts follows each
//! one, then the final status with the counts.
//!
//! C-STOREs go only to SOP classes for which the peer was granted the SCP
//! role (SCP/SCU role selection, PS3.7 D.3.3.4); an instance of any other
//! class is a failed sub-operation, logged, and the C-GET goes on. A peer
//! that does not answer a C-STORE within the DIMSE timeout fails that
//! sub-operation and the ones not yet attempted; the final response follows.
//!
//! The Failed SOP Instance UID List of PS3.4 C.4.3.1.3.2 is logged, not
//! sent: DCMTK's DcmSCU (getscu) never reads an identifier on the final
//! C-GET-RSP and then fails its A-RELEASE on the unread P-DATA. The counts
//! carry the failures on the wire.

use std::collections::{HashMap, VecDeque};

use dicom_ul::association::Association;
use dicom_ul::association::AsyncServerAssociation;
use dicom_ul::association::Error as UlError;
use dicom_ul::pdu::{PDataValueType, Pdu, UserVariableItem};
use tokio::net::TcpStream;

use crate::association::{
    Context, Tally, cancel_requested, is_cancel_of, send_command, send_data, trim_uid,
};
use crate::dimse::{Command, Message, field, status, tag};
use crate::server::Gateway;
use crate::services::retrieve::{self, Counts, Outcome};
use crate::services::transcode;

/// Answer a C-GET, from the request to its final response.
pub(crate) async fn handle(
    gateway: &Gateway,
    association: &mut AsyncServerAssociation<TcpStream>,
    message: Message,
    context: &Context,
    contexts: &HashMap<u8, Context>,
    stash: &mut VecDeque<Pdu>,
    tally: &mut Tally,
) -> Result<(), UlError> {
    let pc = message.presentation_context_id;
    let request = message.command;
    let instances =
        match retrieve::instances(gateway, context, message.data_set.as_deref(), "C-GET").await {
            Ok(instances) => instances,
            Err(s) => {
                let rsp = status::response(&request, field::C_GET_RSP, &s);
                return send_command(association, pc, &rsp).await;
            }
        };
    let total = instances.len();
    let scp_granted = scp_role_granted(association);
    let timeout = gateway.config.dimse_timeout();
    let mut done = Counts::default();
    let mut cancelled = false;
    let mut sub_id: u16 = 1;
    for (n, instance) in instances.iter().enumerate() {
        if !cancelled && cancel_requested(association, request.message_id(), stash).await {
            cancelled = true;
        }
        if cancelled {
            break;
        }
        let class = &instance.sop_class_uid;
        let syntax = &instance.transfer_syntax;
        // PS3.7 D.3.3.4: without the SCP role granted for the SOP class the
        // requestor did not agree to receive C-STOREs on its contexts.
        let offered: Vec<(u8, &str)> = contexts
            .iter()
            .filter(|(_, c)| c.abstract_syntax == *class)
            .map(|(id, c)| (*id, c.transfer_syntax.as_str()))
            .collect();
        let target = if !offered.is_empty() && !scp_granted.iter().any(|c| c == class) {
            Err(format!(
                "the peer was not granted the SCP role for {class} (SCP/SCU role \
                 selection), no C-STORE sent"
            ))
        } else {
            transcode::choose(syntax, offered.iter().copied()).ok_or_else(|| {
                format!(
                    "the peer accepted no context for {class} in {syntax} or a syntax it \
                     converts to losslessly (accepted: {:?})",
                    offered.iter().map(|(_, t)| *t).collect::<Vec<_>>()
                )
            })
        };
        let mut stalled = false;
        let outcome = match target {
            Err(why) => Outcome::Failed(why),
            Ok((target, target_syntax, _)) => {
                match retrieve::outgoing_data_set(gateway, instance, target_syntax).await {
                    Err(e) => Outcome::Failed(e),
                    Ok(data) => {
                        let rq = retrieve::sub_store_request(instance, sub_id);
                        // Sending is bounded by the association's write
                        // timeout; the wait for the answer by the DIMSE one.
                        send_command(association, target, &rq).await?;
                        send_data(association, target, &data).await?;
                        let answer = tokio::time::timeout(
                            timeout,
                            await_store_response(
                                association,
                                sub_id,
                                request.message_id(),
                                stash,
                                &mut cancelled,
                            ),
                        )
                        .await;
                        sub_id = sub_id.wrapping_add(1);
                        match answer {
                            Ok(code) => Outcome::of_store_status(code?, "peer"),
                            Err(_) => {
                                stalled = true;
                                Outcome::Failed(format!(
                                    "no C-STORE-RSP within the DIMSE timeout ({} s)",
                                    timeout.as_secs()
                                ))
                            }
                        }
                    }
                }
            }
        };
        done.record("C-GET", &instance.sop_instance_uid, outcome);
        if stalled {
            // A peer that stopped answering gets no more sub-operations:
            // the rest fail now instead of each waiting out the timeout.
            for rest in &instances[n + 1..] {
                done.record(
                    "C-GET",
                    &rest.sop_instance_uid,
                    Outcome::Failed("not attempted: the peer stopped answering".into()),
                );
            }
            break;
        }
        let remaining = total - n - 1;
        if remaining > 0 {
            let pending = done.pending(&request, field::C_GET_RSP, remaining);
            send_command(association, pc, &pending).await?;
        }
    }
    let code = done.final_status(cancelled);
    let last = done.final_response(&request, field::C_GET_RSP, code, total - done.processed());
    tally.failed += done.failed.len() as u64;
    tracing::info!(
        instances = total,
        completed = done.completed,
        failed = done.failed.len(),
        warning = done.warning,
        status = format_args!("{code:#06X}"),
        "C-GET"
    );
    // PS3.4 C.4.3.1.3.2 puts the Failed SOP Instance UID List in an
    // identifier of the final C-GET-RSP, but DCMTK's DcmSCU (getscu) never
    // reads that data set and then fails its A-RELEASE on the unread P-DATA.
    // For C-GET the list goes to the log only; C-MOVE sends it.
    if !done.failed.is_empty() {
        tracing::warn!(failed = ?done.failed, "C-GET failed SOP Instance UIDs");
    }
    send_command(association, pc, &last).await
}

/// The SOP classes for which the requestor was granted the SCP role in the
/// A-ASSOCIATE-AC (the role selection items we answered with).
fn scp_role_granted(association: &AsyncServerAssociation<TcpStream>) -> Vec<String> {
    association
        .user_variables()
        .iter()
        .filter_map(|v| match v {
            UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles) if roles.scp => {
                Some(trim_uid(uid))
            }
            _ => None,
        })
        .collect()
}

/// Wait for the C-STORE-RSP of a sub-operation; a C-CANCEL of the C-GET
/// seen meanwhile is noted, other PDUs are kept for later.
async fn await_store_response(
    association: &mut AsyncServerAssociation<TcpStream>,
    sub_id: u16,
    get_id: Option<u16>,
    stash: &mut VecDeque<Pdu>,
    cancelled: &mut bool,
) -> Result<u16, UlError> {
    loop {
        let pdu = association.receive().await?;
        if is_cancel_of(&pdu, get_id) {
            *cancelled = true;
            continue;
        }
        if let Pdu::PData { data } = &pdu {
            for pdv in data {
                if pdv.value_type == PDataValueType::Command
                    && pdv.is_last
                    && let Ok(c) = Command::decode(&pdv.data)
                    && c.command_field() == Some(field::C_STORE_RSP)
                    && c.us(tag::MESSAGE_ID_BEING_RESPONDED_TO) == Some(sub_id)
                {
                    return Ok(c.us(tag::STATUS).unwrap_or(0xC000));
                }
            }
        }
        if matches!(pdu, Pdu::AbortRQ { .. } | Pdu::ReleaseRQ) {
            stash.push_back(pdu);
            return Ok(0xC000);
        }
        stash.push_back(pdu);
    }
}
