//! AE title access control: our called AE title, an allow-list of calling AE
//! titles optionally bound to addresses, or an explicit accept-any. Refusals
//! are logged here, where both titles and the peer address are known.

use std::net::SocketAddr;
use std::sync::Arc;

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};

use crate::config::GatewayConfig;

/// The access decision for one connection (it captures the peer address,
/// which dicom-ul does not pass to [`AccessControl`]).
pub struct PeerAccess {
    config: Arc<GatewayConfig>,
    peer: SocketAddr,
}

impl PeerAccess {
    pub fn new(config: Arc<GatewayConfig>, peer: SocketAddr) -> Self {
        PeerAccess { config, peer }
    }

    /// The decision, independent of dicom-ul.
    pub fn decide(
        &self,
        called: &str,
        calling: &str,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called.trim() != self.config.ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if self.config.accept_any_calling_ae {
            return Ok(());
        }
        let calling = calling.trim();
        let allowed = self.config.allowed_peers.iter().any(|p| {
            p.ae_title.trim() == calling
                && (p.addresses.is_empty()
                    || p.addresses.iter().any(|a| same_ip(*a, self.peer.ip())))
        });
        if allowed {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// Compare addresses, treating IPv4-mapped IPv6 as IPv4.
fn same_ip(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

impl AccessControl for PeerAccess {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let decision = self.decide(called_ae_title, calling_ae_title);
        if let Err(reason) = &decision {
            tracing::warn!(
                peer = %self.peer,
                calling_ae = calling_ae_title,
                called_ae = called_ae_title,
                %reason,
                "association rejected"
            );
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AllowedPeer;

    fn access(config: GatewayConfig, peer: &str) -> PeerAccess {
        PeerAccess::new(Arc::new(config), peer.parse().unwrap())
    }

    #[test]
    fn allow_list_with_addresses() {
        let config = GatewayConfig {
            allowed_peers: vec![
                AllowedPeer {
                    ae_title: "CT1".into(),
                    addresses: vec!["10.0.0.5".parse().unwrap()],
                },
                AllowedPeer {
                    ae_title: "WS".into(),
                    addresses: vec![],
                },
            ],
            ..GatewayConfig::default()
        };
        let a = access(config.clone(), "10.0.0.5:4000");
        assert_eq!(a.decide("PACS", "CT1"), Ok(()));
        assert_eq!(a.decide("PACS", "WS"), Ok(()));
        assert_eq!(
            a.decide("OTHER", "CT1"),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        assert_eq!(
            a.decide("PACS", "MR1"),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        let b = access(config.clone(), "10.0.0.6:4000");
        assert!(b.decide("PACS", "CT1").is_err());
        assert!(b.decide("PACS", "WS").is_ok());
        let mapped = access(config, "[::ffff:10.0.0.5]:4000");
        assert!(mapped.decide("PACS", "CT1").is_ok());
    }

    #[test]
    fn deny_by_default_and_explicit_accept_any() {
        let a = access(GatewayConfig::default(), "127.0.0.1:1");
        assert!(a.decide("PACS", "ANY").is_err());
        let any = access(
            GatewayConfig {
                accept_any_calling_ae: true,
                ..GatewayConfig::default()
            },
            "127.0.0.1:1",
        );
        assert!(any.decide("PACS", "ANY").is_ok());
        assert!(any.decide("NOTPACS", "ANY").is_err());
    }
}
