//! C-MOVE SCP (PS3.4 C.4.2): the selected instances go to the named move
//! destination over a new association on which the archive is the storage
//! SCU, proposing per SOP class its stored transfer syntaxes and Explicit
//! and Implicit VR Little Endian ([`proposal`]); each instance goes out as
//! stored when the destination took that syntax, else converted losslessly
//! ([`super::transcode`]). Pending responses carry the counts, the final
//! response the counts and, when sub-operations failed, the Failed SOP
//! Instance UID List (0008,0058) in its identifier (PS3.4 C.4.2.1.4).
//!
//! An instance with no usable context is a failed sub-operation (PS3.4
//! C.4.2.3.1), also when the destination accepted no context at all; the
//! final status is then Warning B000 if anything else went through, or
//! Refused A702 if every sub-operation failed (see
//! [`crate::dimse::status::retrieve_final_status`]).
//!
//! DIMSE timeout: a destination that does not answer a C-STORE within
//! `dimse_timeout_secs` fails that sub-operation; the sub-association is
//! aborted and every sub-operation not yet attempted fails without a retry
//! (a destination that stalls once is likely to stall again, and retrying
//! would stretch the C-MOVE by one timeout per instance). The final
//! response follows as usual.

use std::collections::VecDeque;
use std::time::Duration;

use dicom_ul::association::Error as UlError;
use dicom_ul::association::{AsyncAssociation, AsyncServerAssociation};
use dicom_ul::pdu::{PDataValueType, Pdu};
use tokio::net::TcpStream;

use crate::association::{
    Context, Peer, Tally, cancel_requested, error_chain, send_command, send_data, trim_uid,
};
use crate::dimse::{Command, Message, Status, field, status, tag};
use crate::server::Gateway;
use crate::services::retrieve::{self, Counts, Instance, Outcome};
use crate::services::transcode::{self, EXPLICIT_VR_LE, IMPLICIT_VR_LE};

/// Answer a C-MOVE, from the request to its final response.
pub(crate) async fn handle(
    gateway: &Gateway,
    association: &mut AsyncServerAssociation<TcpStream>,
    message: Message,
    context: &Context,
    peer: &Peer,
    stash: &mut VecDeque<Pdu>,
    tally: &mut Tally,
) -> Result<(), UlError> {
    let pc = message.presentation_context_id;
    let request = message.command;
    let refuse = |code: u16, comment: &str| {
        status::response(&request, field::C_MOVE_RSP, &Status::failure(code, comment))
    };
    let destination_ae = request
        .text(tag::MOVE_DESTINATION)
        .unwrap_or_default()
        .to_owned();
    let Some(destination) = gateway
        .config
        .move_destinations
        .iter()
        .find(|d| d.ae_title.trim() == destination_ae)
        .cloned()
    else {
        tracing::warn!(destination = %destination_ae, "C-MOVE to an unknown destination");
        let rsp = refuse(status::MOVE_DESTINATION_UNKNOWN, "move destination unknown");
        return send_command(association, pc, &rsp).await;
    };
    let instances =
        match retrieve::instances(gateway, context, message.data_set.as_deref(), "C-MOVE").await {
            Ok(instances) => instances,
            Err(s) => {
                let rsp = refuse(s.code, s.comment.as_deref().unwrap_or_default());
                return send_command(association, pc, &rsp).await;
            }
        };
    let total = instances.len();
    let mut done = Counts::default();
    let mut cancelled = false;
    let mut stalled = false;
    if total > 0 {
        let proposed = proposal(&instances);
        let mut options = dicom_ul::ClientAssociationOptions::new()
            .calling_ae_title(gateway.config.ae_title.clone())
            .called_ae_title(destination.ae_title.clone())
            .max_pdu_length(gateway.config.effective_max_pdu_length());
        for (class, syntaxes) in &proposed {
            options = options.with_presentation_context(class.clone(), syntaxes.clone());
        }
        let address = format!("{}:{}", destination.host, destination.port);
        let sub = tokio::time::timeout(
            gateway.config.artim_timeout(),
            options.establish_async(address.clone()),
        )
        .await;
        let mut sub = match sub {
            Ok(Ok(sub)) => Some(sub),
            // The destination is there but takes none of the instances as
            // stored: every sub-operation fails for want of a context.
            Ok(Err(UlError::NoAcceptedPresentationContexts { .. })) => {
                tracing::warn!(destination = %destination.ae_title, %address, "C-MOVE: the destination accepted none of the proposed presentation contexts");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(destination = %destination.ae_title, %address, error = %error_chain(&e), "C-MOVE: cannot associate with the destination");
                let rsp = refuse(
                    status::UNABLE_TO_PERFORM_SUB_OPERATIONS,
                    "cannot associate with the move destination",
                );
                return send_command(association, pc, &rsp).await;
            }
            Err(_) => {
                let rsp = refuse(
                    status::UNABLE_TO_PERFORM_SUB_OPERATIONS,
                    "move destination did not answer",
                );
                return send_command(association, pc, &rsp).await;
            }
        };
        // dicom-ul lists only the contexts the destination accepted.
        let accepted: Vec<(u8, String, String)> = sub
            .as_ref()
            .map(|sub| {
                sub.presentation_contexts()
                    .iter()
                    .map(|c| {
                        (
                            c.id,
                            trim_uid(&c.abstract_syntax),
                            trim_uid(&c.transfer_syntax),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let timeout = gateway.config.dimse_timeout();
        let mut sub_id: u16 = 1;
        for (n, instance) in instances.iter().enumerate() {
            if cancel_requested(association, request.message_id(), stash).await {
                cancelled = true;
                break;
            }
            let (class, syntax) = (&instance.sop_class_uid, &instance.transfer_syntax);
            let target = transcode::choose(
                syntax,
                accepted
                    .iter()
                    .filter(|(_, c, _)| c == class)
                    .map(|(id, _, t)| (*id, t.as_str())),
            );
            tracing::debug!(sop_instance_uid = %instance.sop_instance_uid, %class, %syntax, ?target, "C-MOVE sub-operation");
            let outcome = match (target, sub.as_mut()) {
                (Some((target, target_syntax, _)), Some(association_to_destination)) => {
                    let outcome = store_on(
                        gateway,
                        association_to_destination,
                        (target, target_syntax),
                        instance,
                        sub_id,
                        &request,
                        peer,
                    )
                    .await;
                    sub_id = sub_id.wrapping_add(1);
                    match outcome {
                        Some(outcome) => outcome,
                        None => {
                            // The destination stopped answering: abort the
                            // sub-association; the rest cannot go anywhere.
                            tracing::warn!(
                                destination = %destination.ae_title,
                                seconds = timeout.as_secs(),
                                "C-MOVE: no C-STORE-RSP within the DIMSE timeout, \
                                 sub-association aborted"
                            );
                            if let Some(unanswering) = sub.take() {
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(1),
                                    unanswering.abort(),
                                )
                                .await;
                            }
                            stalled = true;
                            Outcome::Failed(format!(
                                "no C-STORE-RSP within the DIMSE timeout ({} s)",
                                timeout.as_secs()
                            ))
                        }
                    }
                }
                (_, None) if stalled => Outcome::Failed(
                    "not attempted: the destination stopped answering (DIMSE timeout)".into(),
                ),
                _ => Outcome::Failed(format!(
                    "the destination accepted no context for {class} in {syntax} or a \
                     syntax it converts to losslessly"
                )),
            };
            done.record("C-MOVE", &instance.sop_instance_uid, outcome);
            let remaining = total - n - 1;
            if remaining > 0 {
                let pending = done.pending(&request, field::C_MOVE_RSP, remaining);
                send_command(association, pc, &pending).await?;
            }
        }
        if let Some(sub) = sub {
            // A destination that never answers the A-RELEASE-RQ is dropped.
            let _ = tokio::time::timeout(timeout, AsyncAssociation::release(sub)).await;
        }
    }
    let code = done.final_status(cancelled);
    let mut last = done.final_response(&request, field::C_MOVE_RSP, code, total - done.processed());
    tally.failed += done.failed.len() as u64;
    tracing::info!(
        destination = %destination.ae_title,
        instances = total,
        completed = done.completed,
        failed = done.failed.len(),
        warning = done.warning,
        status = format_args!("{code:#06X}"),
        "C-MOVE"
    );
    // The identifier of a final response other than Success: the Failed
    // SOP Instance UID List (movescu reads it).
    match (!done.failed.is_empty())
        .then(|| retrieve::failed_uid_list(&done.failed, &context.transfer_syntax))
        .flatten()
    {
        Some(identifier) => {
            last.set_us(
                tag::COMMAND_DATA_SET_TYPE,
                crate::dimse::command::DATA_SET_PRESENT,
            );
            send_command(association, pc, &last).await?;
            send_data(association, pc, &identifier).await
        }
        None => send_command(association, pc, &last).await,
    }
}

/// The presentation contexts of the sub-association: one per (SOP class,
/// stored syntax) with that syntax alone, so a destination that takes it
/// gets the instance as stored, then one per SOP class with Explicit and
/// Implicit VR Little Endian, for the instances the destination does not
/// take as stored and that convert losslessly (see [`transcode`]). At most
/// the 128 contexts an association can carry, stored syntaxes first.
fn proposal(instances: &[Instance]) -> Vec<(String, Vec<String>)> {
    let mut stored: Vec<(String, Vec<String>)> = Vec::new();
    let mut native: Vec<(String, Vec<String>)> = Vec::new();
    for i in instances {
        let as_stored = (i.sop_class_uid.clone(), vec![i.transfer_syntax.clone()]);
        if !stored.contains(&as_stored) {
            stored.push(as_stored);
        }
        let fallback = (
            i.sop_class_uid.clone(),
            vec![EXPLICIT_VR_LE.to_owned(), IMPLICIT_VR_LE.to_owned()],
        );
        if !native.contains(&fallback) {
            native.push(fallback);
        }
    }
    stored.into_iter().chain(native).take(128).collect()
}

/// One C-STORE sub-operation on the sub-association: read the instance
/// back, send it, wait for the destination's C-STORE-RSP.
/// `target`: the accepted context and its transfer syntax. `None` when
/// the destination did not answer within the DIMSE timeout (sending the
/// data set included): the sub-association is then unusable.
async fn store_on(
    gateway: &Gateway,
    sub: &mut dicom_ul::association::AsyncClientAssociation<TcpStream>,
    (target, target_syntax): (u8, &str),
    instance: &Instance,
    sub_id: u16,
    request: &Command,
    peer: &Peer,
) -> Option<Outcome> {
    let data = match retrieve::outgoing_data_set(gateway, instance, target_syntax).await {
        Ok(data) => data,
        Err(e) => return Some(Outcome::Failed(e)),
    };
    let mut rq = retrieve::sub_store_request(instance, sub_id);
    rq.set_text(tag::MOVE_ORIGINATOR_AE_TITLE, &peer.calling_ae);
    if let Some(id) = request.message_id() {
        rq.set_us(tag::MOVE_ORIGINATOR_MESSAGE_ID, id);
    }
    let sent = async {
        send_command(sub, target, &rq).await?;
        send_data(sub, target, &data).await?;
        loop {
            if let Pdu::PData { data } = AsyncAssociation::receive(sub).await?
                && let Some(c) = data
                    .iter()
                    .filter(|p| p.value_type == PDataValueType::Command && p.is_last)
                    .find_map(|p| Command::decode(&p.data).ok())
                    .filter(|c| c.us(tag::MESSAGE_ID_BEING_RESPONDED_TO) == Some(sub_id))
            {
                break Ok::<u16, UlError>(c.us(tag::STATUS).unwrap_or(0xC000));
            }
        }
    };
    match tokio::time::timeout(gateway.config.dimse_timeout(), sent).await {
        Ok(Ok(code)) => Some(Outcome::of_store_status(code, "destination")),
        Ok(Err(e)) => Some(Outcome::Failed(format!(
            "sub-association failed: {}",
            error_chain(&e)
        ))),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(uid: &str, class: &str, syntax: &str) -> Instance {
        Instance {
            sop_instance_uid: uid.into(),
            sop_class_uid: class.into(),
            transfer_syntax: syntax.into(),
        }
    }

    #[test]
    fn the_proposal_offers_each_stored_syntax_alone_then_native_per_class() {
        const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
        const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
        const JPEG: &str = "1.2.840.10008.1.2.4.50";
        let instances = [
            instance("1", CT, JPEG),
            instance("2", CT, EXPLICIT_VR_LE),
            instance("3", CT, JPEG),
            instance("4", MR, IMPLICIT_VR_LE),
        ];
        let native = vec![EXPLICIT_VR_LE.to_owned(), IMPLICIT_VR_LE.to_owned()];
        assert_eq!(
            proposal(&instances),
            vec![
                (CT.to_owned(), vec![JPEG.to_owned()]),
                (CT.to_owned(), vec![EXPLICIT_VR_LE.to_owned()]),
                (MR.to_owned(), vec![IMPLICIT_VR_LE.to_owned()]),
                (CT.to_owned(), native.clone()),
                (MR.to_owned(), native),
            ]
        );
        // Never more than an association can carry.
        let many: Vec<Instance> = (0..200)
            .map(|n| instance(&n.to_string(), &format!("1.2.3.{n}"), JPEG))
            .collect();
        assert_eq!(proposal(&many).len(), 128);
    }
}
