//! Shared test harness: a gateway in-process on 127.0.0.1 port 0 over a
//! fresh archive, DCMTK tools as real peers, and a small SCU built on
//! dicom-ul for the misbehaving peers DCMTK cannot imitate.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::ClientAssociationOptions;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use pacs_archive::{Archive, ArchiveConfig};
use pacs_dicom_gateway::dimse::{Command, field, tag};
use pacs_dicom_gateway::{AllowedPeer, Gateway, GatewayConfig, GatewayCounters, GatewayError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous: the machine has two cores and may be busy.
pub const TIMEOUT: Duration = Duration::from_secs(300);

pub const CALLING: &str = "TESTSCU";

pub struct Server {
    pub addr: SocketAddr,
    pub archive: Archive,
    pub counters: Arc<GatewayCounters>,
    /// The study index the gateway answers study-level C-FIND from.
    pub index: Arc<pacs_indexer::StudyIndex>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
    _dir: tempfile::TempDir,
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PACS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

impl Server {
    /// Start a gateway allowing [`CALLING`] from 127.0.0.1, after `tune`.
    pub async fn start(tune: impl FnOnce(&mut GatewayConfig)) -> Server {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(ArchiveConfig::embedded(dir.path()))
            .await
            .unwrap();
        let mut config = GatewayConfig {
            allowed_peers: vec![AllowedPeer {
                ae_title: CALLING.into(),
                addresses: vec!["127.0.0.1".parse().unwrap()],
            }],
            ..GatewayConfig::default()
        };
        tune(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let index = pacs_indexer::StudyIndex::open(&dir.path().join("index")).unwrap();
        index.spawn_follower(archive.catalog().clone());
        let gateway = Gateway::new(archive.clone(), config).with_index(index.clone());
        let counters = gateway.counters();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(listener, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            archive,
            counters,
            index,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Ask for shutdown without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shut down and wait for the drain to finish.
    pub async fn shutdown(&mut self) {
        self.signal_shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("shutdown timed out")
                .unwrap()
                .unwrap();
        }
    }

    /// Wait (bounded) until the study index has every stored change.
    pub async fn indexed(&self) {
        let newest = self.archive.catalog().last_change_seq().await.unwrap();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.index.indexed_seq() < newest {
            assert!(
                tokio::time::Instant::now() < deadline,
                "index did not catch up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub async fn instance_count(&self) -> i64 {
        self.archive.stats().await.unwrap().instances
    }

    /// Wait (bounded) until `condition` holds on the counters.
    pub async fn wait_for(&self, what: &str, condition: impl Fn(&GatewayCounters) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !condition(&self.counters) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Are DCMTK's echoscu, storescu and dcmsend there? See [`dcmtk_tools`].
pub fn dcmtk() -> bool {
    dcmtk_tools(&["echoscu", "storescu", "dcmsend"])
}

/// Are these DCMTK tools in /usr/bin? Missing tools fail the test when
/// PACS_TEST_REQUIRE_PEERS is set (the test script installs them), and skip
/// it otherwise.
pub fn dcmtk_tools(tools: &[&'static str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !Path::new("/usr/bin").join(t).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("PACS_TEST_REQUIRE_PEERS").is_some() {
        panic!("DCMTK tools missing: {missing:?} (apt-get install dcmtk)");
    }
    eprintln!("skipping: DCMTK tools missing: {missing:?} (apt-get install dcmtk)");
    false
}

/// Run a DCMTK tool with TCP_NODELAY=1 (DCMTK leaves Nagle on otherwise).
pub async fn dcmtk_tool(tool: &str, args: &[&str]) -> (bool, String) {
    let output: Output = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(Path::new("/usr/bin").join(tool))
            .args(args)
            .env("TCP_NODELAY", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{tool} timed out"))
    .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Split a Part-10 file into (transfer syntax UID, data set bytes).
pub fn split_part10(bytes: &[u8]) -> (String, &[u8]) {
    assert_eq!(&bytes[128..132], b"DICM");
    // (0002,0000) UL, explicit VR LE: tag 4 + "UL" 2 + length 2 + value 4.
    let group_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let meta_end = 144 + group_len;
    let meta = &bytes[132..meta_end];
    let mut at = 0;
    let mut ts = String::new();
    while at + 8 <= meta.len() {
        let element = u16::from_le_bytes([meta[at + 2], meta[at + 3]]);
        let vr = &meta[at + 4..at + 6];
        let (len, header) = if matches!(vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT" | b"UC") {
            (
                u32::from_le_bytes(meta[at + 8..at + 12].try_into().unwrap()) as usize,
                12,
            )
        } else {
            (u16::from_le_bytes([meta[at + 6], meta[at + 7]]) as usize, 8)
        };
        if element == 0x0010 {
            ts = String::from_utf8_lossy(&meta[at + header..at + header + len])
                .trim_end_matches(['\0', ' '])
                .to_owned();
        }
        at += header + len;
    }
    (ts, &bytes[meta_end..])
}

/// A minimal SCU on dicom-ul, for peers that misbehave on purpose.
pub struct TestScu {
    pub association: AsyncClientAssociation<TcpStream>,
    next_id: u16,
}

impl TestScu {
    pub async fn connect(
        addr: SocketAddr,
        contexts: &[(&str, &str)],
    ) -> Result<TestScu, dicom_ul::association::Error> {
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(CALLING)
            .called_ae_title("PACS");
        for (abstract_syntax, ts) in contexts {
            options = options.with_presentation_context(*abstract_syntax, vec![*ts]);
        }
        let association = tokio::time::timeout(TIMEOUT, options.establish_async(addr))
            .await
            .expect("association timed out")?;
        Ok(TestScu {
            association,
            next_id: 1,
        })
    }

    pub fn context_id(&self, abstract_syntax: &str) -> Option<u8> {
        self.association
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.abstract_syntax == abstract_syntax
                    && pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
            })
            .map(|pc| pc.id)
    }

    pub fn store_command(&mut self, sop_class: &str, sop_instance: &str) -> Vec<u8> {
        let mut c = Command::new(field::C_STORE_RQ);
        c.set_text(tag::AFFECTED_SOP_CLASS_UID, sop_class)
            .set_us(tag::MESSAGE_ID, self.next_id)
            .set_us(tag::PRIORITY, 0)
            .set_us(tag::COMMAND_DATA_SET_TYPE, 0)
            .set_text(tag::AFFECTED_SOP_INSTANCE_UID, sop_instance);
        self.next_id += 1;
        c.encode()
    }

    pub async fn send_pdv(
        &mut self,
        pc: u8,
        value_type: PDataValueType,
        is_last: bool,
        data: &[u8],
    ) {
        self.association
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type,
                    is_last,
                    data: data.to_vec(),
                }],
            })
            .await
            .unwrap();
    }

    /// Send data set bytes in fragments that fit the server's max PDU.
    pub async fn send_data(&mut self, pc: u8, data: &[u8], last: bool) {
        let chunk = (self.association.acceptor_max_pdu_length() as usize - 64).max(1);
        let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let is_last = last && i + 1 == pieces.len();
            self.send_pdv(pc, PDataValueType::Data, is_last, piece)
                .await;
        }
    }

    /// A complete C-STORE; returns the response command.
    pub async fn store(&mut self, sop_class: &str, sop_instance: &str, data: &[u8]) -> Command {
        let pc = self.context_id(sop_class).expect("no accepted context");
        let command = self.store_command(sop_class, sop_instance);
        self.send_pdv(pc, PDataValueType::Command, true, &command)
            .await;
        self.send_data(pc, data, true).await;
        self.response().await
    }

    pub async fn response(&mut self) -> Command {
        match tokio::time::timeout(TIMEOUT, self.association.receive())
            .await
            .expect("no response")
            .unwrap()
        {
            Pdu::PData { data } => {
                let bytes: Vec<u8> = data.into_iter().flat_map(|p| p.data).collect();
                Command::decode(&bytes).unwrap()
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    pub async fn receive(&mut self) -> Result<Pdu, dicom_ul::association::Error> {
        tokio::time::timeout(TIMEOUT, self.association.receive())
            .await
            .expect("nothing received")
    }
}

/// What a C-GET or C-MOVE answered, read message by message.
#[derive(Debug)]
pub struct Retrieved {
    /// The pending (FF00) responses, in order.
    pub pending: Vec<Command>,
    /// The final response.
    pub last: Command,
    /// The identifier of the final response, if one came.
    pub identifier: Option<Vec<u8>>,
    /// SOP Instance UIDs of the C-STORE sub-operations received on this
    /// association (C-GET), each answered with success.
    pub stored: Vec<String>,
    /// Their data sets, in the same order, as received.
    pub stored_data_sets: Vec<Vec<u8>>,
}

impl Retrieved {
    pub fn status(&self) -> u16 {
        self.last.us(tag::STATUS).expect("final status")
    }

    /// (completed, failed, warning) of the final response.
    pub fn counts(&self) -> (Option<u16>, Option<u16>, Option<u16>) {
        (
            self.last.us(tag::COMPLETED_SUB_OPERATIONS),
            self.last.us(tag::FAILED_SUB_OPERATIONS),
            self.last.us(tag::WARNING_SUB_OPERATIONS),
        )
    }

    /// The Failed SOP Instance UID List (0008,0058) of the final response's
    /// identifier (Implicit VR Little Endian), sorted; `None` without one.
    pub fn failed_uids(&self) -> Option<Vec<String>> {
        let bytes = self.identifier.as_ref()?;
        let object = dicom_object::InMemDicomObject::read_dataset_with_ts(
            bytes.as_slice(),
            &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .expect("identifier of the final response");
        let mut uids: Vec<String> = object
            .element(dicom_core::Tag(0x0008, 0x0058))
            .expect("Failed SOP Instance UID List")
            .to_multi_str()
            .unwrap()
            .iter()
            .map(|u| u.trim_end_matches(['\0', ' ']).to_owned())
            .collect();
        uids.sort();
        Some(uids)
    }
}

/// A STUDY-level retrieve identifier for these studies (Implicit VR LE).
pub fn study_identifier(studies: &[&str]) -> Vec<u8> {
    let mut o = dicom_object::InMemDicomObject::new_empty();
    o.put_str(dicom_core::Tag(0x0008, 0x0052), dicom_core::VR::CS, "STUDY");
    o.put_str(
        dicom_core::Tag(0x0020, 0x000D),
        dicom_core::VR::UI,
        studies.join("\\"),
    );
    let mut out = Vec::new();
    o.write_dataset_with_ts(
        &mut out,
        &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .unwrap();
    out
}

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

impl TestScu {
    /// Connect proposing `contexts` and, for each SOP class in `scp_roles`,
    /// the SCP role (so that C-GET sub-operations may come back).
    pub async fn connect_with_scp_roles(
        addr: SocketAddr,
        contexts: &[(&str, &str)],
        scp_roles: &[&str],
    ) -> Result<TestScu, dicom_ul::association::Error> {
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(CALLING)
            .called_ae_title("PACS");
        for (abstract_syntax, ts) in contexts {
            options = options.with_presentation_context(*abstract_syntax, vec![*ts]);
        }
        for class in scp_roles {
            options = options.with_role_selection(*class, true, true);
        }
        let association = tokio::time::timeout(TIMEOUT, options.establish_async(addr))
            .await
            .expect("association timed out")?;
        Ok(TestScu {
            association,
            next_id: 1,
        })
    }

    /// Send a C-GET-RQ (`move_destination: None`) or C-MOVE-RQ on the
    /// context of `model` with `identifier`, answer every C-STORE
    /// sub-operation that comes back with success, and collect the
    /// responses up to the final one (and its identifier).
    pub async fn retrieve(
        &mut self,
        model: &str,
        move_destination: Option<&str>,
        identifier: &[u8],
    ) -> Retrieved {
        let pc = self.context_id(model).expect("no accepted Q/R context");
        let mut rq = Command::new(if move_destination.is_some() {
            field::C_MOVE_RQ
        } else {
            field::C_GET_RQ
        });
        rq.set_text(tag::AFFECTED_SOP_CLASS_UID, model)
            .set_us(tag::MESSAGE_ID, self.next_id)
            .set_us(tag::PRIORITY, 0)
            .set_us(tag::COMMAND_DATA_SET_TYPE, 0);
        if let Some(destination) = move_destination {
            rq.set_text(tag::MOVE_DESTINATION, destination);
        }
        self.next_id += 1;
        self.send_pdv(pc, PDataValueType::Command, true, &rq.encode())
            .await;
        self.send_data(pc, identifier, true).await;

        let mut pending = Vec::new();
        let mut stored = Vec::new();
        let mut stored_data_sets = Vec::new();
        let mut command_bytes = Vec::new();
        let mut data_bytes = Vec::new();
        let mut open: Option<(u8, Command)> = None;
        loop {
            let Pdu::PData { data } = self.receive().await.expect("retrieve answer") else {
                panic!("expected P-DATA during the retrieve");
            };
            for pdv in data {
                let complete = match pdv.value_type {
                    PDataValueType::Command => {
                        command_bytes.extend_from_slice(&pdv.data);
                        if !pdv.is_last {
                            continue;
                        }
                        let command = Command::decode(&std::mem::take(&mut command_bytes))
                            .expect("command set");
                        if command.has_data_set() {
                            open = Some((pdv.presentation_context_id, command));
                            continue;
                        }
                        (pdv.presentation_context_id, command, None)
                    }
                    PDataValueType::Data => {
                        data_bytes.extend_from_slice(&pdv.data);
                        if !pdv.is_last {
                            continue;
                        }
                        let (id, command) = open.take().expect("data set without command");
                        (id, command, Some(std::mem::take(&mut data_bytes)))
                    }
                };
                let (id, command, data_set) = complete;
                match command.command_field() {
                    Some(field::C_STORE_RQ) => {
                        stored.push(
                            command
                                .text(tag::AFFECTED_SOP_INSTANCE_UID)
                                .unwrap_or_default()
                                .to_owned(),
                        );
                        stored_data_sets.push(data_set.unwrap_or_default());
                        let rsp = Command::response_to(&command, field::C_STORE_RSP, 0);
                        self.send_pdv(id, PDataValueType::Command, true, &rsp.encode())
                            .await;
                    }
                    _ if command.us(tag::STATUS) == Some(0xFF00) => pending.push(command),
                    _ => {
                        return Retrieved {
                            pending,
                            last: command,
                            identifier: data_set,
                            stored,
                            stored_data_sets,
                        };
                    }
                }
            }
        }
    }
}
