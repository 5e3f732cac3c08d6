//! `[dicom]`: the DIMSE listener, its limits and who may talk to it.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Configuration of the DICOM gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Our AE title; a peer must call it exactly (A-ASSOCIATE-RJ otherwise).
    pub ae_title: String,
    /// Address to listen on.
    pub listen_address: IpAddr,
    /// TCP port of the DIMSE listener.
    pub port: u16,
    /// Most associations at once; the next one is rejected (transient,
    /// local limit exceeded).
    pub max_associations: usize,
    /// Largest P-DATA-TF PDU we accept, bytes (announced in A-ASSOCIATE-AC).
    /// Values below 65536 are raised to 65536: dicom-ul 0.10.1 applies this
    /// limit to the A-ASSOCIATE-RQ as well, and a peer proposing many
    /// presentation contexts sends a request of 10-50 KB.
    pub max_pdu_length: u32,
    /// ARTIM: seconds a new connection has to send its A-ASSOCIATE-RQ.
    pub artim_timeout_secs: u64,
    /// Seconds an established association may stay silent before we abort it.
    pub idle_timeout_secs: u64,
    /// DIMSE timeout: seconds a retrieve waits for the C-STORE-RSP of one
    /// sub-operation (including sending its data set) from a C-MOVE
    /// destination or a C-GET requestor. Past it the sub-operation and the
    /// ones not yet attempted are failed, a C-MOVE sub-association is
    /// aborted, and the retrieve ends with its final status.
    pub dimse_timeout_secs: u64,
    /// On shutdown, seconds in-flight messages have to finish before their
    /// associations are aborted.
    pub shutdown_grace_secs: u64,
    /// Largest DIMSE message (command + data set) we accept, bytes.
    pub max_message_bytes: u64,
    /// Most matches one C-FIND returns; past it the query ends with 0xA700
    /// (out of resources) and the peer should narrow it.
    pub max_find_matches: usize,
    /// Accept any calling AE title from any address. When false, only the
    /// peers listed in `allowed_peers` may associate.
    pub accept_any_calling_ae: bool,
    /// Calling AE titles allowed to associate, each optionally restricted to
    /// addresses.
    pub allowed_peers: Vec<AllowedPeer>,
    /// C-MOVE destinations: the AE titles a C-MOVE may name, and where they
    /// listen. A destination not listed gets status 0xA801.
    pub move_destinations: Vec<MoveDestination>,
}

/// Where a C-MOVE destination AE listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveDestination {
    /// The destination's AE title, as a C-MOVE-RQ names it.
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// One allowed calling AE title.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedPeer {
    /// The calling AE title, exactly (case-sensitive, without padding).
    pub ae_title: String,
    /// Addresses it may connect from; empty means any address.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            ae_title: "PACS".into(),
            listen_address: IpAddr::from([0, 0, 0, 0]),
            port: 11112,
            max_associations: 32,
            max_pdu_length: 65_536,
            artim_timeout_secs: 30,
            idle_timeout_secs: 300,
            dimse_timeout_secs: 60,
            shutdown_grace_secs: 30,
            max_message_bytes: 4 << 30,
            max_find_matches: 1000,
            accept_any_calling_ae: false,
            allowed_peers: Vec::new(),
            move_destinations: Vec::new(),
        }
    }
}

/// The smallest max PDU length the gateway announces (see `max_pdu_length`).
pub const MIN_MAX_PDU_LENGTH: u32 = 65_536;

impl GatewayConfig {
    /// The max PDU length actually announced and enforced.
    pub fn effective_max_pdu_length(&self) -> u32 {
        self.max_pdu_length
            .clamp(MIN_MAX_PDU_LENGTH, dicom_ul::pdu::MAXIMUM_PDU_SIZE)
    }

    pub fn artim_timeout(&self) -> Duration {
        Duration::from_secs(self.artim_timeout_secs.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub fn dimse_timeout(&self) -> Duration {
        Duration::from_secs(self.dimse_timeout_secs.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}
