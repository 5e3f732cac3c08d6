//! The listener: accepts TCP connections, caps concurrent associations with
//! a semaphore (the connection over the cap gets A-ASSOCIATE-RJ
//! rejected-transient / local-limit-exceeded), and on shutdown stops
//! accepting, lets in-flight messages finish within the grace period, then
//! aborts what is left.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource, Pdu,
};
use pacs_archive::Archive;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::GatewayError;
use crate::association;
use crate::config::GatewayConfig;
use crate::metrics::GatewayCounters;

/// What every association needs: the archive, the configuration, counters.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) archive: Archive,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) counters: Arc<GatewayCounters>,
    /// The study index: study-level C-FIND is answered from it when set.
    pub(crate) index: Option<Arc<pacs_indexer::StudyIndex>>,
}

impl Gateway {
    pub fn new(archive: Archive, config: GatewayConfig) -> Self {
        Gateway {
            archive,
            config: Arc::new(config),
            counters: Arc::new(GatewayCounters::default()),
            index: None,
        }
    }

    /// Answer study-level C-FIND from the search index (the same matching
    /// as QIDO-RS) instead of the catalog.
    pub fn with_index(mut self, index: Arc<pacs_indexer::StudyIndex>) -> Self {
        self.index = Some(index);
        self
    }

    pub fn counters(&self) -> Arc<GatewayCounters> {
        self.counters.clone()
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Serve associations on `listener` until `shutdown` completes, then
    /// drain: in-flight messages get `shutdown_grace_secs` to finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), GatewayError> {
        let local = listener.local_addr().map_err(GatewayError::Io)?;
        if !self.config.accept_any_calling_ae && self.config.allowed_peers.is_empty() {
            tracing::warn!(
                "no calling AE title is allowed: set dicom.accept_any_calling_ae or dicom.allowed_peers"
            );
        }
        tracing::info!(
            address = %local,
            ae_title = %self.config.ae_title,
            max_associations = self.config.max_associations,
            "DICOM gateway listening"
        );
        let slots = Arc::new(Semaphore::new(self.config.max_associations.max(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: back off
                            // instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    if let Err(e) = socket.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let gateway = self.clone();
                            let stop = stop_rx.clone();
                            let span = tracing::info_span!("association", %peer);
                            tasks.spawn(
                                async move {
                                    association::run(gateway, socket, peer, stop).await;
                                    drop(permit);
                                }
                                .instrument(span),
                            );
                        }
                        Err(_) => {
                            GatewayCounters::add(&self.counters.associations_rejected, 1);
                            let artim = self.config.artim_timeout();
                            let max_pdu = self.config.effective_max_pdu_length();
                            tasks.spawn(reject_over_capacity(socket, peer, artim, max_pdu));
                        }
                    }
                }
                // Reap finished tasks so the set does not grow without bound.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(listener);
        let open = tasks.len();
        tracing::info!(open_associations = open, "DICOM gateway shutting down");
        let _ = stop_tx.send(true);
        let grace = self.config.shutdown_grace();
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                remaining = tasks.len(),
                "grace period over, aborting remaining associations"
            );
            tasks.shutdown().await;
        }
        tracing::info!("DICOM gateway stopped");
        Ok(())
    }
}

/// Answer the A-ASSOCIATE-RQ of a connection over the cap with
/// A-ASSOCIATE-RJ (rejected-transient, service-provider presentation,
/// local-limit-exceeded), as PS3.8 9.3.4 prescribes, then close.
async fn reject_over_capacity(
    mut socket: TcpStream,
    peer: SocketAddr,
    artim: Duration,
    max_pdu: u32,
) {
    let mut buffer = BytesMut::with_capacity(4096);
    let max_pdu = max_pdu.clamp(
        dicom_ul::pdu::MINIMUM_PDU_SIZE,
        dicom_ul::pdu::MAXIMUM_PDU_SIZE,
    );
    let request = tokio::time::timeout(
        artim,
        dicom_ul::association::read_pdu_from_wire_async(&mut socket, &mut buffer, max_pdu, false),
    )
    .await;
    let calling = match request {
        Ok(Ok(Pdu::AssociationRQ(rq))) => rq.calling_ae_title,
        _ => return,
    };
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut out = Vec::with_capacity(16);
    if dicom_ul::write_pdu(&mut out, &rj).is_ok() {
        let _ = tokio::time::timeout(artim, socket.write_all(&out)).await;
        let _ = socket.shutdown().await;
    }
    tracing::warn!(%peer, calling_ae = %calling, "association rejected: too many associations");
}
