//! The archive as the sink of the MLLP listener: an ORU^R01 becomes the
//! archive's one result model and goes through `Archive::ingest_message`,
//! which makes the raw message and its results durable before the ACK AA.

use bytes::Bytes;
use pacs_archive::results::{
    Coding, MessageFormat, MessageReceipt, MessageRefusal, PatientResults, ResultMessage,
    ResultObservation, ResultPatient, ResultReport,
};
use pacs_archive::{Archive, IngestSource};

use crate::oru::{CodedElement, Observation, ObservationValue, OrderGroup, Patient, report_text};
use crate::server::{MessageSink, ReceivedMessage, SinkError, SinkReceipt};

/// Records every accepted message in the archive.
#[derive(Clone)]
pub struct ArchiveSink {
    archive: Archive,
}

impl ArchiveSink {
    pub fn new(archive: Archive) -> Self {
        ArchiveSink { archive }
    }
}

fn some(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn coding(c: &CodedElement) -> Coding {
    Coding {
        code: some(&c.code),
        display: some(&c.text),
        system: some(&c.coding_system),
    }
}

fn patient(p: &Patient) -> ResultPatient {
    let id = p.identifiers.iter().find(|i| !i.id.trim().is_empty());
    ResultPatient {
        id: id.map(|i| i.id.trim().to_owned()).unwrap_or_default(),
        issuer: id.and_then(|i| some(&i.assigning_authority)),
        name: p.name().map(|n| n.to_dicom_pn()).and_then(|n| some(&n)),
        // HL7 DT/TS: the date is the first eight characters.
        birth_date: p.birth_date.as_deref().map(|d| d.chars().take(8).collect()),
        sex: p.sex.clone(),
    }
}

fn observation(o: &Observation) -> ResultObservation {
    let numeric_value = o.values.iter().find_map(|v| match v {
        ObservationValue::Numeric(d) => Some(d.value),
        ObservationValue::StructuredNumeric(sn)
            if matches!(sn.comparator.as_str(), "" | "=") && sn.separator.is_empty() =>
        {
            sn.number.as_ref().map(|d| d.value)
        }
        _ => None,
    });
    let value: Vec<String> = o.values.iter().map(ObservationValue::display).collect();
    ResultObservation {
        code: coding(&o.identifier),
        value_type: some(&o.value_type),
        value: (!value.is_empty()).then(|| value.join("\n")),
        numeric_value,
        units: o
            .units
            .as_ref()
            .and_then(|u| some(&u.code).or_else(|| some(&u.text))),
        reference_range: o.reference_range.clone(),
        abnormal_flags: o.abnormal_flags.clone(),
        status: o.status.as_ref().map(|s| s.code().to_owned()),
        observed_at: o.observation_time.clone(),
        notes: o.notes.clone(),
    }
}

fn report(order: &OrderGroup) -> ResultReport {
    ResultReport {
        placer_number: order.placer_order_number.clone(),
        filler_number: order.filler_order_number.clone(),
        accession_number: order.accession_number.clone(),
        service: coding(&order.universal_service),
        observed_at: order.observation_time.clone(),
        status: order.result_status.clone(),
        report_text: report_text(order),
        study_instance_uid: None,
        observations: order.observations.iter().map(observation).collect(),
    }
}

/// The archive's model of a received ORU^R01.
pub fn to_result_message(m: &ReceivedMessage) -> ResultMessage {
    let key = &m.key;
    ResultMessage {
        format: MessageFormat::Hl7v2,
        message_type: "ORU^R01".into(),
        sender: format!("{}|{}", key.sending_application, key.sending_facility),
        control_id: key.control_id.clone(),
        patients: m
            .message
            .results
            .iter()
            .map(|r| PatientResults {
                patient: patient(&r.patient),
                reports: r.orders.iter().map(report).collect(),
            })
            .collect(),
    }
}

impl MessageSink for ArchiveSink {
    async fn accept(&self, message: ReceivedMessage) -> Result<SinkReceipt, SinkError> {
        let result = to_result_message(&message);
        let source = IngestSource::Other(format!("mllp:{}", message.peer));
        // The content without the trailing segment terminator: clients
        // differ on it, and a re-sent message must hash the same.
        let raw = Bytes::copy_from_slice(message.content());
        match self.archive.ingest_message(raw, result, source).await {
            MessageReceipt::Stored { .. } => Ok(SinkReceipt::Stored),
            MessageReceipt::Duplicate { .. } => Ok(SinkReceipt::Duplicate),
            MessageReceipt::Refused(MessageRefusal::Conflict(why)) => Err(SinkError::Conflict(why)),
            MessageReceipt::Refused(MessageRefusal::Invalid(why)) => Err(SinkError::Rejected(why)),
            MessageReceipt::Refused(MessageRefusal::Unavailable(why)) => {
                Err(SinkError::Unavailable(why))
            }
        }
    }
}
