//! C-STORE SCP (PS3.4 Annex B): the data set goes to the archive exactly as
//! received, in the presentation context's transfer syntax; the response is
//! sent only once the archive's receipt is final.

use pacs_archive::{IngestReceipt, IngestSource, ReceivedDataSet};

use crate::association::{Context, Peer, Tally};
use crate::dimse::message::DataSet;
use crate::dimse::{Command, Status, field, status, tag};
use crate::metrics::GatewayCounters;
use crate::server::Gateway;
use crate::sop_classes;

pub(crate) async fn handle(
    gateway: &Gateway,
    request: &Command,
    data_set: Option<DataSet>,
    context: &Context,
    peer: &Peer,
    tally: &mut Tally,
) -> Command {
    let status = store(gateway, request, data_set, context, peer).await;
    let counters = &gateway.counters;
    if status.is_success() {
        tally.stored += 1;
    } else {
        tally.failed += 1;
        GatewayCounters::add(&counters.store_failures, 1);
    }
    let mut response = Command::response_to(request, field::C_STORE_RSP, status.code);
    if let Some(comment) = &status.comment {
        response.set_text(tag::ERROR_COMMENT, comment);
    }
    response
}

async fn store(
    gateway: &Gateway,
    request: &Command,
    data_set: Option<DataSet>,
    context: &Context,
    peer: &Peer,
) -> Status {
    let sop_class = request
        .text(tag::AFFECTED_SOP_CLASS_UID)
        .unwrap_or_default();
    let sop_instance = request
        .text(tag::AFFECTED_SOP_INSTANCE_UID)
        .unwrap_or_default();
    let refuse = |status: Status| {
        tracing::warn!(
            calling_ae = %peer.calling_ae,
            sop_instance_uid = sop_instance,
            sop_class_uid = sop_class,
            status = format_args!("{:#06X}", status.code),
            reason = status.comment.as_deref().unwrap_or(""),
            "C-STORE refused"
        );
        status
    };
    if sop_class.is_empty() || sop_instance.is_empty() {
        return refuse(Status::failure(
            status::CANNOT_UNDERSTAND,
            "C-STORE-RQ lacks Affected SOP Class or Instance UID",
        ));
    }
    if !sop_classes::is_storage(&context.abstract_syntax) || sop_class != context.abstract_syntax {
        return refuse(Status::failure(
            status::SOP_CLASS_NOT_SUPPORTED,
            "SOP class does not match a storage presentation context",
        ));
    }
    let Some(data_set) = data_set else {
        return refuse(Status::failure(
            status::CANNOT_UNDERSTAND,
            "C-STORE-RQ without a data set",
        ));
    };
    let size = data_set.len();
    let received = ReceivedDataSet {
        transfer_syntax_uid: &context.transfer_syntax,
        sop_class_uid: sop_class,
        sop_instance_uid: sop_instance,
        calling_ae: Some(&peer.calling_ae),
    };
    let source = IngestSource::CStore {
        calling_ae: peer.calling_ae.clone(),
        peer: peer.address.to_string(),
    };
    let receipt = gateway
        .archive
        .ingest_received(received, source, |prefix| data_set.with_prefix(prefix))
        .await;
    let status = status::store_status(&receipt);
    match &receipt {
        IngestReceipt::Stored(i) | IngestReceipt::Replaced(i) => {
            GatewayCounters::add(&gateway.counters.instances_stored, 1);
            if i.sop_instance_uid != sop_instance {
                // The archive files the object under its data set's UID.
                tracing::warn!(
                    command_uid = sop_instance,
                    data_set_uid = %i.sop_instance_uid,
                    "Affected SOP Instance UID differs from the data set's"
                );
            }
            tracing::info!(
                calling_ae = %peer.calling_ae,
                sop_instance_uid = %i.sop_instance_uid,
                sop_class = sop_classes::name(sop_class),
                transfer_syntax = %context.transfer_syntax,
                bytes = size,
                stored_bytes = i.stored_size,
                receipt = receipt.label(),
                "instance stored"
            );
        }
        IngestReceipt::Duplicate(i) => {
            GatewayCounters::add(&gateway.counters.instances_duplicate, 1);
            tracing::info!(
                calling_ae = %peer.calling_ae,
                sop_instance_uid = %i.sop_instance_uid,
                "duplicate of a stored instance"
            );
        }
        IngestReceipt::Refused(r) => {
            tracing::warn!(
                calling_ae = %peer.calling_ae,
                sop_instance_uid = sop_instance,
                status = format_args!("{:#06X}", status.code),
                reason = %r.reason,
                "C-STORE refused by the archive"
            );
        }
    }
    status
}
