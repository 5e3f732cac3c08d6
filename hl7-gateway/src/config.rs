//! `[mllp]`: the HL7 v2 listener and its limits.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Configuration of the MLLP listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MllpConfig {
    /// Address to listen on.
    pub listen_address: IpAddr,
    /// TCP port (2575 is the port registered for HL7 over MLLP).
    pub port: u16,
    /// Most connections at once; a connection over the cap is closed
    /// at once (MLLP has no way to say "busy").
    pub max_connections: usize,
    /// Largest message (the bytes between the MLLP start and end blocks).
    /// A larger frame is answered with AR (addressed when its header can be
    /// read) and the connection is closed.
    pub max_frame_bytes: usize,
    /// Seconds a connection may stay silent before it is closed; a frame
    /// left unfinished then is dropped without an answer.
    pub idle_timeout_secs: u64,
    /// On shutdown, seconds a message being processed has to finish before
    /// its connection is aborted (it then gets no ACK and will be re-sent).
    pub shutdown_grace_secs: u64,
    /// MSH-3 of our ACKs when the received MSH-5 is empty.
    pub application: String,
    /// MSH-4 of our ACKs when the received MSH-6 is empty.
    pub facility: String,
}

impl Default for MllpConfig {
    fn default() -> Self {
        MllpConfig {
            listen_address: IpAddr::from([0, 0, 0, 0]),
            port: 2575,
            max_connections: 64,
            max_frame_bytes: 10 << 20,
            idle_timeout_secs: 600,
            shutdown_grace_secs: 30,
            application: "PACS".into(),
            facility: String::new(),
        }
    }
}

impl MllpConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_documented_section() {
        let text = r#"
            listen_address = "127.0.0.1"
            port = 12575
            max_frame_bytes = 1048576
            idle_timeout_secs = 60
            application = "PACS_LITE"
        "#;
        let c: MllpConfig = toml::from_str(text).unwrap();
        assert_eq!(c.port, 12575);
        assert_eq!(c.max_frame_bytes, 1 << 20);
        assert_eq!(c.max_connections, 64);
        assert!(toml::from_str::<MllpConfig>("prot = 1").is_err());
    }
}
