//! One association, from A-ASSOCIATE-RQ to release or abort: negotiation
//! through dicom-ul (with per-connection access control), then a loop that
//! reassembles DIMSE messages and hands them to the services.
//!
//! Timeouts: ARTIM bounds the wait for the A-ASSOCIATE-RQ; the idle timeout
//! bounds every wait for a PDU afterwards. A peer that aborts, disconnects
//! or times out in the middle of a message leaves nothing behind: the
//! partial message is dropped before it reaches the archive.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use dicom_ul::association::Error as UlError;
use dicom_ul::association::server::{Negotiation, ServerAssociationOptions};
use dicom_ul::association::{Association, AsyncAssociation, AsyncServerAssociation};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, PDataValue, PDataValueType, Pdu,
    PresentationContextResultReason,
};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::acl::PeerAccess;
use crate::dimse::{Assembler, Command, Message, field, tag};
use crate::metrics::GatewayCounters;
use crate::server::Gateway;
use crate::services;
use crate::sop_classes;

/// SCP/SCU role selection (PS3.7 D.3.3.4): a C-GET requestor asks to be
/// the SCP of storage SOP classes, so that C-STORE sub-operations can go to
/// it on the same association. Granted as proposed for storage classes.
struct StorageRoles;

impl Negotiation for StorageRoles {
    fn negotiate_roles(
        &self,
        sop_class_uid: &str,
        scu_role: bool,
        scp_role: bool,
    ) -> Option<dicom_ul::pdu::RequestorRoles> {
        sop_classes::is_storage(sop_class_uid.trim_end_matches('\0')).then_some(
            dicom_ul::pdu::RequestorRoles {
                scu: scu_role,
                scp: scp_role,
            },
        )
    }
}

/// An accepted presentation context.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub abstract_syntax: String,
    pub transfer_syntax: String,
}

/// What the services know about the association they serve.
pub(crate) struct Peer {
    pub calling_ae: String,
    pub address: SocketAddr,
}

/// Per-association tallies for the closing log line.
#[derive(Default)]
pub(crate) struct Tally {
    pub stored: u64,
    pub failed: u64,
    pub bytes: u64,
}

enum End {
    Released,
    AbortedByPeer,
    Closed,
    Aborted(String),
    Shutdown,
}

pub(crate) async fn run(
    gateway: Gateway,
    socket: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let config = gateway.config.clone();
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(PeerAccess::new(config.clone(), peer))
        .with_negotiation(StorageRoles)
        .ae_title(config.ae_title.clone())
        .max_pdu_length(config.effective_max_pdu_length())
        .write_timeout(config.idle_timeout())
        .strict(true);
    for uid in sop_classes::accepted_abstract_syntaxes() {
        options = options.with_abstract_syntax(uid);
    }
    for ts in sop_classes::STORAGE_TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(ts.uid);
    }
    let established =
        tokio::time::timeout(config.artim_timeout(), options.establish_async(socket)).await;
    let mut association = match established {
        Ok(Ok(a)) => a,
        Ok(Err(UlError::Rejected { association_rj, .. })) => {
            // Access refusals are logged with both AE titles by the ACL.
            tracing::debug!(source = %association_rj.source, "association rejected");
            GatewayCounters::add(&gateway.counters.associations_rejected, 1);
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "association not established");
            GatewayCounters::add(&gateway.counters.associations_rejected, 1);
            return;
        }
        Err(_) => {
            tracing::warn!("ARTIM timeout: no A-ASSOCIATE-RQ, connection closed");
            GatewayCounters::add(&gateway.counters.associations_rejected, 1);
            return;
        }
    };
    let contexts: HashMap<u8, Context> = association
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.id,
                // dicom-ul hands the chosen transfer syntax back as the peer
                // spelled it, NUL padding included (DCMTK pads odd UIDs).
                Context {
                    abstract_syntax: trim_uid(&pc.abstract_syntax),
                    transfer_syntax: trim_uid(&pc.transfer_syntax),
                },
            )
        })
        .collect();
    for pc in association.presentation_contexts() {
        if pc.reason != PresentationContextResultReason::Acceptance {
            tracing::info!(
                id = pc.id,
                abstract_syntax = %pc.abstract_syntax,
                reason = ?pc.reason,
                "presentation context rejected"
            );
        }
    }
    let remote = Peer {
        calling_ae: association.peer_ae_title().trim().to_owned(),
        address: peer,
    };
    GatewayCounters::add(&gateway.counters.associations_accepted, 1);
    GatewayCounters::add(&gateway.counters.associations_active, 1);
    tracing::info!(
        calling_ae = %remote.calling_ae,
        called_ae = %association.called_ae_title(),
        accepted_contexts = contexts.len(),
        proposed_contexts = association.presentation_contexts().len(),
        peer_max_pdu = association.peer_max_pdu_length(),
        "association opened"
    );
    let started = Instant::now();
    let mut tally = Tally::default();
    let end = serve_messages(
        &gateway,
        &mut association,
        &contexts,
        &remote,
        &mut stop,
        &mut tally,
    )
    .await;
    gateway
        .counters
        .associations_active
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let (how, detail) = match &end {
        End::Released => ("released", String::new()),
        End::AbortedByPeer => ("aborted by the peer", String::new()),
        End::Closed => ("connection closed without release", String::new()),
        End::Aborted(why) => ("aborted", why.clone()),
        End::Shutdown => ("aborted for shutdown", String::new()),
    };
    if !matches!(end, End::Released) {
        GatewayCounters::add(&gateway.counters.associations_aborted, 1);
    }
    tracing::info!(
        calling_ae = %remote.calling_ae,
        how,
        detail = %detail,
        stored = tally.stored,
        failed = tally.failed,
        bytes = tally.bytes,
        seconds = started.elapsed().as_secs_f64(),
        "association closed"
    );
}

async fn serve_messages(
    gateway: &Gateway,
    association: &mut AsyncServerAssociation<TcpStream>,
    contexts: &HashMap<u8, Context>,
    peer: &Peer,
    stop: &mut watch::Receiver<bool>,
    tally: &mut Tally,
) -> End {
    let idle = gateway.config.idle_timeout();
    let mut assembler = Assembler::new(gateway.config.max_message_bytes);
    // PDUs that arrived while a C-FIND was being answered, still to handle.
    let mut stash: VecDeque<Pdu> = VecDeque::new();
    loop {
        if *stop.borrow() && assembler.is_idle() {
            abort(association, AbortRQSource::ServiceUser).await;
            return End::Shutdown;
        }
        let idle_now = assembler.is_idle();
        let received = if let Some(pdu) = stash.pop_front() {
            Ok(Ok(pdu))
        } else {
            tokio::select! {
            biased;
            // Stop only between messages: an in-flight C-STORE finishes.
            _ = stop.wait_for(|s| *s), if idle_now => continue,
            r = tokio::time::timeout(idle, association.receive()) => r,
            }
        };
        let pdu = match received {
            Err(_) => {
                abort(
                    association,
                    provider(AbortRQServiceProviderReason::ReasonNotSpecified),
                )
                .await;
                return End::Aborted(format!(
                    "idle timeout after {} s{}",
                    idle.as_secs(),
                    discarded(&assembler)
                ));
            }
            Ok(Err(UlError::ConnectionClosed { .. })) => {
                if !assembler.is_idle() {
                    tracing::warn!("{}", discarded(&assembler).trim_start_matches(", "));
                }
                return End::Closed;
            }
            Ok(Err(e)) => {
                // Too large, malformed or unknown PDUs.
                abort(
                    association,
                    provider(AbortRQServiceProviderReason::InvalidPduParameter),
                )
                .await;
                return End::Aborted(format!("{}{}", error_chain(&e), discarded(&assembler)));
            }
            Ok(Ok(pdu)) => pdu,
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type == PDataValueType::Data {
                        tally.bytes += pdv.data.len() as u64;
                        GatewayCounters::add(
                            &gateway.counters.bytes_received,
                            pdv.data.len() as u64,
                        );
                    }
                    match assembler.push(pdv, |pc| contexts.contains_key(&pc)) {
                        Ok(None) => {}
                        Ok(Some(message)) => {
                            let context = &contexts[&message.presentation_context_id];
                            let pc = message.presentation_context_id;
                            let find_model = [
                                crate::services::find::PATIENT_ROOT_FIND,
                                crate::services::find::STUDY_ROOT_FIND,
                            ]
                            .contains(&context.abstract_syntax.as_str());
                            let get_model = [
                                crate::services::find::PATIENT_ROOT_GET,
                                crate::services::find::STUDY_ROOT_GET,
                            ]
                            .contains(&context.abstract_syntax.as_str());
                            let move_model = [
                                crate::services::find::PATIENT_ROOT_MOVE,
                                crate::services::find::STUDY_ROOT_MOVE,
                            ]
                            .contains(&context.abstract_syntax.as_str());
                            if move_model
                                && message.command.command_field() == Some(field::C_MOVE_RQ)
                            {
                                if let Err(e) = move_to(
                                    gateway,
                                    association,
                                    message,
                                    context,
                                    peer,
                                    &mut stash,
                                    tally,
                                )
                                .await
                                {
                                    return End::Aborted(format!(
                                        "C-MOVE interrupted: {}",
                                        error_chain(&e)
                                    ));
                                }
                                continue;
                            }
                            if get_model && message.command.command_field() == Some(field::C_GET_RQ)
                            {
                                if let Err(e) = get(
                                    gateway,
                                    association,
                                    message,
                                    context,
                                    contexts,
                                    &mut stash,
                                    tally,
                                )
                                .await
                                {
                                    return End::Aborted(format!(
                                        "C-GET interrupted: {}",
                                        error_chain(&e)
                                    ));
                                }
                                continue;
                            }
                            if find_model
                                && message.command.command_field() == Some(field::C_FIND_RQ)
                            {
                                if let Err(e) =
                                    find(gateway, association, message, context, &mut stash).await
                                {
                                    return End::Aborted(format!(
                                        "cannot send a C-FIND response: {}",
                                        error_chain(&e)
                                    ));
                                }
                                continue;
                            }
                            if let Some(response) =
                                dispatch(gateway, message, context, peer, tally).await
                                && let Err(e) = send_command(association, pc, &response).await
                            {
                                return End::Aborted(format!(
                                    "cannot send a response: {}",
                                    error_chain(&e)
                                ));
                            }
                        }
                        Err(e) => {
                            abort(
                                association,
                                provider(AbortRQServiceProviderReason::UnexpectedPduParameter),
                            )
                            .await;
                            return End::Aborted(format!("DIMSE protocol error: {e}"));
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                if !assembler.is_idle() {
                    tracing::warn!(
                        "A-RELEASE-RQ in the middle of a message{}",
                        discarded(&assembler)
                    );
                }
                let _ = association.send(&Pdu::ReleaseRP).await;
                return End::Released;
            }
            Pdu::AbortRQ { source } => {
                tracing::info!(
                    ?source,
                    "{}",
                    discarded(&assembler).trim_start_matches(", ")
                );
                return End::AbortedByPeer;
            }
            other => {
                abort(
                    association,
                    provider(AbortRQServiceProviderReason::UnexpectedPdu),
                )
                .await;
                return End::Aborted(format!("unexpected {}", pdu_name(&other)));
            }
        }
    }
}

/// Run one complete message through its service; `None` when no response
/// is due (C-CANCEL outside an operation).
async fn dispatch(
    gateway: &Gateway,
    message: Message,
    context: &Context,
    peer: &Peer,
    tally: &mut Tally,
) -> Option<Command> {
    let Message {
        command, data_set, ..
    } = message;
    match command.command_field() {
        Some(field::C_ECHO_RQ) => Some(services::echo::handle(gateway, &command)),
        Some(field::C_STORE_RQ) => {
            Some(services::store::handle(gateway, &command, data_set, context, peer, tally).await)
        }
        Some(field::C_CANCEL_RQ) => None,
        // A late response to one of our sub-operations: nothing to answer.
        Some(f) if f & 0x8000 != 0 => None,
        other => {
            let request_field = other.unwrap_or(0);
            tracing::warn!(
                command_field = format_args!("{request_field:#06X}"),
                "unsupported DIMSE operation"
            );
            Some(Command::response_to(
                &command,
                request_field | 0x8000,
                crate::dimse::status::UNRECOGNIZED_OPERATION,
            ))
        }
    }
}

/// Answer a C-FIND: one pending response with an identifier per match,
/// then the final status. Between matches, a C-CANCEL for this request ends
/// the answer with status Cancel; any other PDU is kept for the main loop.
async fn find(
    gateway: &Gateway,
    association: &mut AsyncServerAssociation<TcpStream>,
    message: Message,
    context: &Context,
    stash: &mut VecDeque<Pdu>,
) -> Result<(), UlError> {
    use crate::dimse::status;
    use crate::services::find;
    let pc = message.presentation_context_id;
    let request = message.command;
    let final_response = |s: crate::dimse::Status| {
        let mut rsp = Command::response_to(&request, field::C_FIND_RSP, s.code);
        if let Some(comment) = &s.comment {
            rsp.set_text(tag::ERROR_COMMENT, comment);
        }
        rsp
    };
    let query = match find::parse(
        &context.abstract_syntax,
        message.data_set.as_deref().unwrap_or_default(),
        &context.transfer_syntax,
    ) {
        Ok(q) => q,
        Err(s) => {
            tracing::warn!(status = format_args!("{:#06X}", s.code), reason = ?s.comment, "C-FIND refused");
            return send_command(association, pc, &final_response(s)).await;
        }
    };
    let cap = gateway.config.max_find_matches;
    let matches = match find_matches(gateway, &query, cap.saturating_add(1)).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "C-FIND: query failed");
            let s = crate::dimse::Status::failure(status::OUT_OF_RESOURCES, "catalog unavailable");
            return send_command(association, pc, &final_response(s)).await;
        }
    };
    let message_id = request.message_id();
    let pending_code = if query.has_unsupported_keys() {
        status::PENDING_WARNING
    } else {
        status::PENDING
    };
    let mut sent = 0usize;
    for index in 0..matches.len().min(cap) {
        // A C-CANCEL may be waiting: look without blocking (receive is
        // cancel-safe, a partly read PDU stays in dicom-ul's buffer).
        if let Ok(Ok(pdu)) =
            tokio::time::timeout(std::time::Duration::ZERO, association.receive()).await
        {
            if is_cancel_of(&pdu, message_id) {
                tracing::info!(sent, "C-FIND cancelled by the peer");
                let s = crate::dimse::Status {
                    code: status::CANCEL,
                    comment: None,
                };
                return send_command(association, pc, &final_response(s)).await;
            }
            stash.push_back(pdu);
        }
        let identifier = match matches.identifier(&query, index) {
            Ok(i) => i,
            Err(s) => return send_command(association, pc, &final_response(s)).await,
        };
        let mut rsp = Command::response_to(&request, field::C_FIND_RSP, pending_code);
        rsp.set_us(
            tag::COMMAND_DATA_SET_TYPE,
            crate::dimse::command::DATA_SET_PRESENT,
        );
        send_command(association, pc, &rsp).await?;
        send_data(association, pc, &identifier).await?;
        sent += 1;
    }
    let done = if matches.len() > cap {
        crate::dimse::Status::failure(
            status::OUT_OF_RESOURCES,
            format!("more than {cap} matches; narrow the query"),
        )
    } else {
        crate::dimse::Status::success()
    };
    let matched: Vec<&str> = query
        .query()
        .conditions
        .iter()
        .map(|c| c.attribute.keyword)
        .collect();
    let source = match matches {
        Matches::Rows(_) => "catalog",
        Matches::Studies(_) => "index",
    };
    tracing::info!(level = ?query.level(), keys = ?matched, matches = sent, source, status = format_args!("{:#06X}", done.code), "C-FIND");
    send_command(association, pc, &final_response(done)).await
}

/// What a C-FIND matched: catalog rows, or studies from the index.
enum Matches {
    Rows(Vec<Vec<Option<String>>>),
    Studies(Vec<pacs_indexer::StudyDoc>),
}

impl Matches {
    fn len(&self) -> usize {
        match self {
            Matches::Rows(r) => r.len(),
            Matches::Studies(s) => s.len(),
        }
    }

    fn identifier(
        &self,
        query: &crate::services::find::FindQuery,
        index: usize,
    ) -> Result<Vec<u8>, crate::dimse::Status> {
        match self {
            Matches::Rows(rows) => crate::services::find::response_identifier(query, &rows[index]),
            Matches::Studies(docs) => {
                query.identifier_with(|a| study_value(&docs[index], a).flatten())
            }
        }
    }
}

/// The value of a study-level attribute from the index: `None` when the
/// index does not hold the attribute, `Some(None)` when it is empty.
fn study_value(
    doc: &pacs_indexer::StudyDoc,
    attribute: &pacs_archive::query::Attribute,
) -> Option<Option<String>> {
    let v = |o: &Option<String>| Some(o.clone());
    match attribute.keyword {
        "StudyInstanceUID" => Some(Some(doc.study_instance_uid.clone())),
        "PatientName" => v(&doc.patient_name),
        "PatientID" => v(&doc.patient_id),
        "IssuerOfPatientID" => v(&doc.issuer_of_patient_id),
        "PatientBirthDate" => v(&doc.patient_birth_date),
        "PatientSex" => v(&doc.patient_sex),
        "StudyDate" => v(&doc.study_date),
        "StudyTime" => v(&doc.study_time),
        "AccessionNumber" => v(&doc.accession_number),
        "StudyID" => v(&doc.study_id),
        "StudyDescription" => v(&doc.study_description),
        "ReferringPhysicianName" => v(&doc.referring_physician_name),
        "ModalitiesInStudy" => Some((!doc.modalities.is_empty()).then(|| doc.modalities.join(","))),
        "NumberOfStudyRelatedSeries" => Some(Some(doc.number_of_series.to_string())),
        "NumberOfStudyRelatedInstances" => Some(Some(doc.number_of_instances.to_string())),
        _ => None,
    }
}

/// Run a C-FIND: a study-level query the index can answer (every key and
/// every returned attribute held by it) goes to the index, the rest to the
/// catalog.
async fn find_matches(
    gateway: &Gateway,
    query: &crate::services::find::FindQuery,
    limit: usize,
) -> Result<Matches, String> {
    use pacs_archive::query::Level;
    if let Some(index) = &gateway.index
        && query.level() == Level::Study
        && pacs_indexer::can_answer(query.query())
        && query
            .returned()
            .iter()
            .all(|a| study_value(&pacs_indexer::StudyDoc::default(), a).is_some())
    {
        let index = index.clone();
        let q = query.query().clone();
        let page = tokio::task::spawn_blocking(move || index.search(&q, limit, 0))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        return Ok(Matches::Studies(page.studies));
    }
    let (sql, binds) = query.catalog_sql();
    gateway
        .archive
        .catalog()
        .select_text_rows(&sql, &binds, limit)
        .await
        .map(Matches::Rows)
        .map_err(|e| e.to_string())
}

/// Answer a C-GET (PS3.4 C.4.3): every selected instance goes back as a
/// C-STORE sub-operation on this association, on a context the peer
/// accepted for its SOP class and stored transfer syntax (never
/// transcoded); a pending response with the counts follows each one; the
/// final response lists the failed SOP Instance UIDs.
async fn get(
    gateway: &Gateway,
    association: &mut AsyncServerAssociation<TcpStream>,
    message: Message,
    context: &Context,
    contexts: &HashMap<u8, Context>,
    stash: &mut VecDeque<Pdu>,
    tally: &mut Tally,
) -> Result<(), UlError> {
    use crate::dimse::status;
    let pc = message.presentation_context_id;
    let request = message.command;
    let rows =
        match instances_to_retrieve(gateway, context, message.data_set.as_deref(), "C-GET").await {
            Ok(rows) => rows,
            Err(s) => {
                let mut rsp = Command::response_to(&request, field::C_GET_RSP, s.code);
                if let Some(c) = &s.comment {
                    rsp.set_text(tag::ERROR_COMMENT, c);
                }
                return send_command(association, pc, &rsp).await;
            }
        };
    let total = rows.len();
    let mut done = GetCounts::default();
    let mut cancelled = false;
    let mut sub_id: u16 = 1;
    for (n, row) in rows.iter().enumerate() {
        let (uid, class, syntax) = row;
        if !cancelled
            && let Ok(Ok(pdu)) =
                tokio::time::timeout(std::time::Duration::ZERO, association.receive()).await
        {
            if is_cancel_of(&pdu, request.message_id()) {
                cancelled = true;
            } else {
                stash.push_back(pdu);
            }
        }
        if cancelled {
            break;
        }
        let target = contexts
            .iter()
            .find(|(_, c)| c.abstract_syntax == *class && c.transfer_syntax == *syntax)
            .map(|(id, _)| *id);
        let outcome = match target {
            None => Err(format!(
                "the peer accepted no context for {class} in {syntax} (offered: {:?})",
                contexts
                    .values()
                    .filter(|c| c.abstract_syntax == *class)
                    .map(|c| c.transfer_syntax.as_str())
                    .collect::<Vec<_>>()
            )),
            Some(target) => match stored_data_set(gateway, uid).await {
                Err(e) => Err(e),
                Ok(data) => {
                    let rq = sub_store_request(class, uid, sub_id);
                    send_command(association, target, &rq).await?;
                    send_data(association, target, &data).await?;
                    let code = await_store_response(
                        association,
                        sub_id,
                        request.message_id(),
                        stash,
                        &mut cancelled,
                    )
                    .await?;
                    sub_id = sub_id.wrapping_add(1);
                    match code {
                        0x0000 => Ok(false),
                        c if c & 0xF000 == 0xB000 => Ok(true),
                        c => Err(format!("peer answered {c:#06X}")),
                    }
                }
            },
        };
        match outcome {
            Ok(false) => done.completed += 1,
            Ok(true) => done.warning += 1,
            Err(why) => {
                tracing::warn!(sop_instance_uid = %uid, reason = %why, "C-GET sub-operation failed");
                done.failed.push(uid.clone());
            }
        }
        let remaining = total - n - 1;
        if remaining > 0 {
            let mut pending = Command::response_to(&request, field::C_GET_RSP, status::PENDING);
            set_counts(&mut pending, remaining, &done);
            send_command(association, pc, &pending).await?;
        }
    }
    let processed = done.completed + done.warning + done.failed.len();
    let code = if cancelled {
        status::CANCEL
    } else if done.failed.is_empty() && done.warning == 0 {
        status::SUCCESS
    } else if done.completed + done.warning == 0 {
        status::UNABLE_TO_PERFORM_SUB_OPERATIONS
    } else {
        status::SUB_OPERATIONS_WITH_FAILURES
    };
    let mut last = Command::response_to(&request, field::C_GET_RSP, code);
    set_counts(&mut last, total - processed, &done);
    if code != status::SUCCESS {
        last.set_us(
            tag::REMAINING_SUB_OPERATIONS,
            (total - processed).min(0xFFFF) as u16,
        );
    }
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

/// Answer a C-MOVE (PS3.4 C.4.2): the selected instances go to the named
/// destination over a new association on which we are the SCU, proposing
/// each instance's stored transfer syntax; pending responses carry the
/// counts, the final one the failed SOP Instance UIDs.
async fn move_to(
    gateway: &Gateway,
    association: &mut AsyncServerAssociation<TcpStream>,
    message: Message,
    context: &Context,
    peer: &Peer,
    stash: &mut VecDeque<Pdu>,
    tally: &mut Tally,
) -> Result<(), UlError> {
    use crate::dimse::status;
    let pc = message.presentation_context_id;
    let request = message.command;
    let fail = |code: u16, comment: &str| {
        let mut rsp = Command::response_to(&request, field::C_MOVE_RSP, code);
        rsp.set_text(
            tag::ERROR_COMMENT,
            &crate::dimse::Status::failure(code, comment)
                .comment
                .unwrap_or_default(),
        );
        rsp
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
        let rsp = fail(status::MOVE_DESTINATION_UNKNOWN, "move destination unknown");
        return send_command(association, pc, &rsp).await;
    };
    let rows = match instances_to_retrieve(gateway, context, message.data_set.as_deref(), "C-MOVE")
        .await
    {
        Ok(rows) => rows,
        Err(s) => {
            let rsp = fail(s.code, s.comment.as_deref().unwrap_or_default());
            return send_command(association, pc, &rsp).await;
        }
    };
    let total = rows.len();
    let mut done = GetCounts::default();
    if total > 0 {
        // One presentation context per (SOP class, stored syntax), up to the
        // 128 an association can carry.
        let mut proposed: Vec<(String, String)> = Vec::new();
        for (_, class, syntax) in &rows {
            let pair = (class.clone(), syntax.clone());
            if !proposed.contains(&pair) && proposed.len() < 128 {
                proposed.push(pair);
            }
        }
        let mut options = dicom_ul::ClientAssociationOptions::new()
            .calling_ae_title(gateway.config.ae_title.clone())
            .called_ae_title(destination.ae_title.clone())
            .max_pdu_length(gateway.config.effective_max_pdu_length());
        for (class, syntax) in &proposed {
            options = options.with_presentation_context(class.clone(), vec![syntax.clone()]);
        }
        let address = format!("{}:{}", destination.host, destination.port);
        let sub = tokio::time::timeout(
            gateway.config.artim_timeout(),
            options.establish_async(address.clone()),
        )
        .await;
        let mut sub = match sub {
            Ok(Ok(sub)) => sub,
            Ok(Err(e)) => {
                tracing::warn!(destination = %destination.ae_title, %address, error = %error_chain(&e), "C-MOVE: cannot associate with the destination");
                let rsp = fail(
                    status::UNABLE_TO_PERFORM_SUB_OPERATIONS,
                    "cannot associate with the move destination",
                );
                return send_command(association, pc, &rsp).await;
            }
            Err(_) => {
                let rsp = fail(
                    status::UNABLE_TO_PERFORM_SUB_OPERATIONS,
                    "move destination did not answer",
                );
                return send_command(association, pc, &rsp).await;
            }
        };
        let accepted: Vec<(u8, String, String)> = sub
            .presentation_contexts()
            .iter()
            .map(|c| {
                (
                    c.id,
                    trim_uid(&c.abstract_syntax),
                    trim_uid(&c.transfer_syntax),
                )
            })
            .collect();
        let mut cancelled = false;
        let mut sub_id: u16 = 1;
        for (n, (uid, class, syntax)) in rows.iter().enumerate() {
            if let Ok(Ok(pdu)) =
                tokio::time::timeout(std::time::Duration::ZERO, association.receive()).await
            {
                if is_cancel_of(&pdu, request.message_id()) {
                    cancelled = true;
                } else {
                    stash.push_back(pdu);
                }
            }
            if cancelled {
                break;
            }
            let target = accepted
                .iter()
                .find(|(_, c, t)| c == class && t == syntax)
                .map(|(id, _, _)| *id);
            tracing::debug!(sop_instance_uid = %uid, %class, %syntax, ?target, "C-MOVE sub-operation");
            let outcome: Result<bool, String> = match target {
                None => Err(format!(
                    "the destination accepted no context for {class} in {syntax}"
                )),
                Some(target) => match stored_data_set(gateway, uid).await {
                    Err(e) => Err(e),
                    Ok(data) => {
                        let mut rq = sub_store_request(class, uid, sub_id);
                        rq.set_text(tag::MOVE_ORIGINATOR_AE_TITLE, &peer.calling_ae);
                        if let Some(id) = request.message_id() {
                            rq.set_us(tag::MOVE_ORIGINATOR_MESSAGE_ID, id);
                        }
                        let sent = async {
                            send_command(&mut sub, target, &rq).await?;
                            send_data(&mut sub, target, &data).await?;
                            loop {
                                if let Pdu::PData { data } =
                                    AsyncAssociation::receive(&mut sub).await?
                                    && let Some(c) = data
                                        .iter()
                                        .filter(|p| {
                                            p.value_type == PDataValueType::Command && p.is_last
                                        })
                                        .find_map(|p| Command::decode(&p.data).ok())
                                        .filter(|c| {
                                            c.us(tag::MESSAGE_ID_BEING_RESPONDED_TO) == Some(sub_id)
                                        })
                                {
                                    break Ok::<u16, UlError>(c.us(tag::STATUS).unwrap_or(0xC000));
                                }
                            }
                        }
                        .await;
                        sub_id = sub_id.wrapping_add(1);
                        match sent {
                            Ok(0) => Ok(false),
                            Ok(c) if c & 0xF000 == 0xB000 => Ok(true),
                            Ok(c) => Err(format!("destination answered {c:#06X}")),
                            Err(e) => Err(format!("sub-association failed: {}", error_chain(&e))),
                        }
                    }
                },
            };
            match outcome {
                Ok(false) => done.completed += 1,
                Ok(true) => done.warning += 1,
                Err(why) => {
                    tracing::warn!(sop_instance_uid = %uid, reason = %why, "C-MOVE sub-operation failed");
                    done.failed.push(uid.clone());
                }
            }
            let remaining = total - n - 1;
            if remaining > 0 {
                let mut pending =
                    Command::response_to(&request, field::C_MOVE_RSP, status::PENDING);
                set_counts(&mut pending, remaining, &done);
                send_command(association, pc, &pending).await?;
            }
        }
        let _ = AsyncAssociation::release(sub).await;
        if cancelled {
            let processed = done.completed + done.warning + done.failed.len();
            let mut last = Command::response_to(&request, field::C_MOVE_RSP, status::CANCEL);
            set_counts(&mut last, total - processed, &done);
            return send_command(association, pc, &last).await;
        }
    }
    let code = if done.failed.is_empty() && done.warning == 0 {
        status::SUCCESS
    } else if done.completed + done.warning == 0 {
        status::UNABLE_TO_PERFORM_SUB_OPERATIONS
    } else {
        status::SUB_OPERATIONS_WITH_FAILURES
    };
    let mut last = Command::response_to(&request, field::C_MOVE_RSP, code);
    set_counts(&mut last, 0, &done);
    tally.failed += done.failed.len() as u64;
    tracing::info!(
        destination = %destination.ae_title,
        instances = total,
        completed = done.completed,
        failed = done.failed.len(),
        status = format_args!("{code:#06X}"),
        "C-MOVE"
    );
    match (!done.failed.is_empty())
        .then(|| failed_uid_list(&done.failed, &context.transfer_syntax))
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

/// The instances a C-GET or C-MOVE identifier selects, as (SOP Instance UID,
/// SOP Class UID, stored transfer syntax): the one query both retrieve
/// services share.
async fn instances_to_retrieve(
    gateway: &Gateway,
    context: &Context,
    identifier: Option<&[u8]>,
    operation: &str,
) -> Result<Vec<(String, String, String)>, crate::dimse::Status> {
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
            crate::dimse::Status::failure(
                crate::dimse::status::UNABLE_TO_PERFORM_SUB_OPERATIONS,
                "catalog unavailable",
            )
        })?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match (r.first(), r.get(1), r.get(2)) {
            (Some(Some(u)), Some(Some(c)), Some(Some(t))) => {
                Some((u.clone(), c.clone(), t.clone()))
            }
            _ => None,
        })
        .collect())
}

fn set_counts(rsp: &mut Command, remaining: usize, done: &GetCounts) {
    rsp.set_us(tag::REMAINING_SUB_OPERATIONS, remaining.min(0xFFFF) as u16)
        .set_us(
            tag::COMPLETED_SUB_OPERATIONS,
            done.completed.min(0xFFFF) as u16,
        )
        .set_us(
            tag::FAILED_SUB_OPERATIONS,
            done.failed.len().min(0xFFFF) as u16,
        )
        .set_us(tag::WARNING_SUB_OPERATIONS, done.warning.min(0xFFFF) as u16);
}

#[derive(Default)]
struct GetCounts {
    completed: usize,
    warning: usize,
    failed: Vec<String>,
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

/// The data set of a stored Part-10 object (after its meta group).
/// The data set of a stored instance, read back (hash verified) for a
/// C-STORE sub-operation of C-GET or C-MOVE.
async fn stored_data_set(gateway: &Gateway, uid: &str) -> Result<bytes::Bytes, String> {
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

/// The C-STORE-RQ of one retrieve sub-operation.
fn sub_store_request(sop_class_uid: &str, sop_instance_uid: &str, message_id: u16) -> Command {
    let mut rq = Command::new(field::C_STORE_RQ);
    rq.set_text(tag::AFFECTED_SOP_CLASS_UID, sop_class_uid)
        .set_us(tag::MESSAGE_ID, message_id)
        .set_us(tag::PRIORITY, 0)
        .set_us(
            tag::COMMAND_DATA_SET_TYPE,
            crate::dimse::command::DATA_SET_PRESENT,
        )
        .set_text(tag::AFFECTED_SOP_INSTANCE_UID, sop_instance_uid);
    rq
}

fn part10_data_set(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.get(128..132)? != b"DICM" {
        return None;
    }
    let group_length = u32::from_le_bytes(bytes.get(140..144)?.try_into().ok()?) as usize;
    bytes.get(144usize.checked_add(group_length)?..)
}

/// The identifier of a final C-GET response: Failed SOP Instance UID List.
fn failed_uid_list(uids: &[String], transfer_syntax: &str) -> Option<Vec<u8>> {
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

/// Is this PDU a C-CANCEL-RQ for the request with `message_id`?
fn is_cancel_of(pdu: &Pdu, message_id: Option<u16>) -> bool {
    let Pdu::PData { data } = pdu else {
        return false;
    };
    data.iter().any(|pdv| {
        pdv.value_type == PDataValueType::Command
            && pdv.is_last
            && Command::decode(&pdv.data).is_ok_and(|c| {
                c.command_field() == Some(field::C_CANCEL_RQ)
                    && c.us(tag::MESSAGE_ID_BEING_RESPONDED_TO) == message_id
            })
    })
}

/// Send a data set in P-DATA fragments that fit the peer's max PDU.
async fn send_data<A: AsyncAssociation<TcpStream> + Send>(
    association: &mut A,
    presentation_context_id: u8,
    data: &[u8],
) -> Result<(), UlError> {
    let room = (association.peer_max_pdu_length() as usize)
        .saturating_sub(16)
        .max(256);
    let chunks: Vec<&[u8]> = data.chunks(room).collect();
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id,
                value_type: PDataValueType::Data,
                is_last: i + 1 == n,
                data: chunk.to_vec(),
            }],
        };
        AsyncAssociation::send(association, &pdu).await?;
    }
    Ok(())
}

async fn send_command<A: AsyncAssociation<TcpStream> + Send>(
    association: &mut A,
    presentation_context_id: u8,
    command: &Command,
) -> Result<(), UlError> {
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: command.encode(),
        }],
    };
    AsyncAssociation::send(association, &pdu).await
}

fn provider(reason: AbortRQServiceProviderReason) -> AbortRQSource {
    AbortRQSource::ServiceProvider(reason)
}

/// Send A-ABORT (best effort: the peer may be gone already).
async fn abort(association: &mut AsyncServerAssociation<TcpStream>, source: AbortRQSource) {
    let _ = association.send(&Pdu::AbortRQ { source }).await;
}

fn discarded(assembler: &Assembler) -> String {
    if assembler.is_idle() {
        String::new()
    } else {
        format!(
            ", partial message of {} bytes discarded, nothing stored",
            assembler.pending_bytes()
        )
    }
}

fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
        Pdu::Unknown { .. } => "unknown PDU",
    }
}

fn trim_uid(uid: &str) -> String {
    uid.trim_end_matches(['\0', ' ']).to_owned()
}

/// An error with its sources, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
