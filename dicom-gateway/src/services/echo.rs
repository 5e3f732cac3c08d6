//! C-ECHO SCP (PS3.4 Annex A, Verification).

use crate::dimse::{Command, field, status};
use crate::metrics::GatewayCounters;
use crate::server::Gateway;

pub(crate) fn handle(gateway: &Gateway, request: &Command) -> Command {
    GatewayCounters::add(&gateway.counters.echoes, 1);
    tracing::debug!("C-ECHO");
    Command::response_to(request, field::C_ECHO_RSP, status::SUCCESS)
}
