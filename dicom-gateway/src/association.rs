//! One association, from A-ASSOCIATE-RQ to release or abort: negotiation
//! through dicom-ul (with per-connection access control), then a loop that
//! reassembles DIMSE messages and hands them to the services
//! (`crate::services`). C-FIND, C-GET and C-MOVE answer with many messages:
//! their services send them through [`send_command`] / [`send_data`] and
//! watch for C-CANCEL with [`cancel_requested`], keeping any other PDU in the
//! loop's stash.
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
                            // C-FIND, C-GET and C-MOVE answer with several
                            // messages and may see a C-CANCEL meanwhile: their
                            // services drive the association until the final
                            // response. The others answer with one response.
                            let served = match Operation::of(&message, context) {
                                Some(Operation::Find) => services::find_scp::handle(
                                    gateway,
                                    association,
                                    message,
                                    context,
                                    &mut stash,
                                )
                                .await
                                .map_err(|e| ("cannot send a C-FIND response", e)),
                                Some(Operation::Get) => services::get::handle(
                                    gateway,
                                    association,
                                    message,
                                    context,
                                    contexts,
                                    &mut stash,
                                    tally,
                                )
                                .await
                                .map_err(|e| ("C-GET interrupted", e)),
                                Some(Operation::Move) => services::move_::handle(
                                    gateway,
                                    association,
                                    message,
                                    context,
                                    peer,
                                    &mut stash,
                                    tally,
                                )
                                .await
                                .map_err(|e| ("C-MOVE interrupted", e)),
                                None => {
                                    match dispatch(gateway, message, context, peer, tally).await {
                                        Some(response) => send_command(association, pc, &response)
                                            .await
                                            .map_err(|e| ("cannot send a response", e)),
                                        None => Ok(()),
                                    }
                                }
                            };
                            if let Err((what, e)) = served {
                                return End::Aborted(format!("{what}: {}", error_chain(&e)));
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

/// The multi-response operations, each on a context of its information
/// model; anything else goes through [`dispatch`].
enum Operation {
    Find,
    Get,
    Move,
}

impl Operation {
    fn of(message: &Message, context: &Context) -> Option<Operation> {
        use services::find::{
            PATIENT_ROOT_FIND, PATIENT_ROOT_GET, PATIENT_ROOT_MOVE, STUDY_ROOT_FIND,
            STUDY_ROOT_GET, STUDY_ROOT_MOVE,
        };
        let model = context.abstract_syntax.as_str();
        match message.command.command_field()? {
            field::C_MOVE_RQ if [PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE].contains(&model) => {
                Some(Operation::Move)
            }
            field::C_GET_RQ if [PATIENT_ROOT_GET, STUDY_ROOT_GET].contains(&model) => {
                Some(Operation::Get)
            }
            field::C_FIND_RQ if [PATIENT_ROOT_FIND, STUDY_ROOT_FIND].contains(&model) => {
                Some(Operation::Find)
            }
            _ => None,
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

/// Has the peer sent a C-CANCEL-RQ for the request with `message_id`?
/// Looks without blocking (receive is cancel-safe: a partly read PDU stays
/// in dicom-ul's buffer); any other PDU that was waiting is kept in `stash`
/// for the message loop.
pub(crate) async fn cancel_requested(
    association: &mut AsyncServerAssociation<TcpStream>,
    message_id: Option<u16>,
    stash: &mut VecDeque<Pdu>,
) -> bool {
    if let Ok(Ok(pdu)) =
        tokio::time::timeout(std::time::Duration::ZERO, association.receive()).await
    {
        if is_cancel_of(&pdu, message_id) {
            return true;
        }
        stash.push_back(pdu);
    }
    false
}

/// Is this PDU a C-CANCEL-RQ for the request with `message_id`?
pub(crate) fn is_cancel_of(pdu: &Pdu, message_id: Option<u16>) -> bool {
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
pub(crate) async fn send_data<A: AsyncAssociation<TcpStream> + Send>(
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

/// Send a command set in one P-DATA fragment.
pub(crate) async fn send_command<A: AsyncAssociation<TcpStream> + Send>(
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

pub(crate) fn trim_uid(uid: &str) -> String {
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
