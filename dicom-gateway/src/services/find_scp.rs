//! C-FIND SCP (PS3.4 C.4.1): the answer loop. The identifier becomes a
//! query in [`super::find`]; the matches come from the study index (study
//! level, when it holds every key) or the catalog; one pending response with
//! an identifier goes out per match, then the final status. Between
//! matches, a C-CANCEL for this request ends the answer with status Cancel;
//! any other PDU is kept for the association's message loop.

use std::collections::VecDeque;

use dicom_ul::association::AsyncServerAssociation;
use dicom_ul::association::Error as UlError;
use dicom_ul::pdu::Pdu;
use tokio::net::TcpStream;

use crate::association::{Context, cancel_requested, send_command, send_data};
use crate::dimse::{Command, Message, Status, field, status, tag};
use crate::server::Gateway;
use crate::services::find::{self, FindQuery};

/// Answer a C-FIND: one pending response with an identifier per match,
/// then the final status. Between matches, a C-CANCEL for this request ends
/// the answer with status Cancel; any other PDU is kept for the main loop.
pub(crate) async fn handle(
    gateway: &Gateway,
    association: &mut AsyncServerAssociation<TcpStream>,
    message: Message,
    context: &Context,
    stash: &mut VecDeque<Pdu>,
) -> Result<(), UlError> {
    let pc = message.presentation_context_id;
    let request = message.command;
    let final_response = |s: Status| status::response(&request, field::C_FIND_RSP, &s);
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
            let s = Status::failure(status::OUT_OF_RESOURCES, "catalog unavailable");
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
        // A C-CANCEL may be waiting.
        if cancel_requested(association, message_id, stash).await {
            tracing::info!(sent, "C-FIND cancelled by the peer");
            let s = Status {
                code: status::CANCEL,
                comment: None,
            };
            return send_command(association, pc, &final_response(s)).await;
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
        Status::failure(
            status::OUT_OF_RESOURCES,
            format!("more than {cap} matches; narrow the query"),
        )
    } else {
        Status::success()
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

    fn identifier(&self, query: &FindQuery, index: usize) -> Result<Vec<u8>, Status> {
        match self {
            Matches::Rows(rows) => find::response_identifier(query, &rows[index]),
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
    query: &FindQuery,
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
