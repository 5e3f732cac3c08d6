"""pacs-lite's FHIR R4 front door driven by independent implementations:
every resource and Bundle the server answers is validated with the
`fhir.resources` R4B models (pydantic, strict: unknown elements, bad
dateTimes and missing required elements fail), searches go through
`fhirclient`'s search API (including its paging), and an HL7 v2 ORU sent
with `mllp_send` (the `hl7` package) is read back as FHIR."""

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from fhir.resources.R4B import get_fhir_model_class
from fhirclient import client as fhir_client
from fhirclient.models.diagnosticreport import DiagnosticReport as ClientDiagnosticReport
from fhirclient.models.observation import Observation as ClientObservation

from conftest import auth

FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
MRN = "http://hospital.example.org/mrn"


def validate(resource):
    """The resource (any type) through the R4B model of its type."""
    model = get_fhir_model_class(resource["resourceType"])
    return model.model_validate(resource)


@pytest.fixture(scope="module")
def fhir_base(server):
    return server.base_url + "/fhir/r4"


@pytest.fixture(scope="module")
def fhir(server):
    s = requests.Session()
    s.headers.update(auth(server.clinician_token))
    s.headers["Accept"] = FHIR_JSON
    yield s
    s.close()


@pytest.fixture(scope="module")
def smart(server, fhir_base):
    c = fhir_client.FHIRClient(settings={"app_id": "pacs-lite-tests", "api_base": fhir_base + "/"})
    c.server.session.headers.update(auth(server.clinician_token))
    return c


def read(fhir, url):
    r = fhir.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == FHIR_JSON
    body = r.json()
    validate(body)
    return body


def lab_bundle(patient_id, order, when, hgb, wbc, identifier=None, corrected=False):
    """A transaction Bundle as a client would build it: Patient, two
    Observations and the DiagnosticReport, linked by urn:uuid."""
    p, o1, o2, dr = (f"urn:uuid:{order.lower()}-{i}" for i in ("p", "1", "2", "r"))
    quantity = lambda v, u: {"value": v, "unit": u, "system": "http://unitsofmeasure.org", "code": u}
    entries = [
        {
            "fullUrl": p,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": MRN, "value": patient_id}],
                "name": [{"family": "Nakamura", "given": ["Aiko"]}],
                "gender": "female",
                "birthDate": "1984-02-29",
            },
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "fullUrl": o1,
            "resource": {
                "resourceType": "Observation",
                "status": "corrected" if corrected else "final",
                "code": {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin [Mass/volume] in Blood"}]},
                "subject": {"reference": p},
                "effectiveDateTime": when,
                "valueQuantity": quantity(hgb, "g/dL"),
                "referenceRange": [{"low": quantity(12.0, "g/dL"), "high": quantity(17.5, "g/dL")}],
                "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}]}],
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "fullUrl": o2,
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "6690-2", "display": "Leukocytes [#/volume] in Blood"}]},
                "subject": {"reference": p},
                "effectiveDateTime": when,
                "valueQuantity": quantity(wbc, "10*9/L"),
                "interpretation": [{"coding": [{"code": "H"}]}],
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "fullUrl": dr,
            "resource": {
                "resourceType": "DiagnosticReport",
                "identifier": [
                    {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}]}, "value": order},
                ],
                "status": "corrected" if corrected else "final",
                "code": {"coding": [{"system": LOINC, "code": "58410-2", "display": "CBC panel - Blood by Automated count"}]},
                "subject": {"reference": p},
                "effectiveDateTime": when,
                "result": [{"reference": o1}, {"reference": o2}],
            },
            "request": {"method": "POST", "url": "DiagnosticReport"},
        },
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    if identifier:
        bundle["identifier"] = {"system": "http://lab.example.org/bundles", "value": identifier}
    # What we send is valid FHIR too.
    validate(bundle)
    return bundle


def first_page(search, server):
    """The first Bundle of a fhirclient search (perform() is deprecated)."""
    return next(iter(search.perform_iter(server)))


def post(fhir, url, body):
    return fhir.post(url, data=json.dumps(body), headers={"Content-Type": FHIR_JSON})


@pytest.fixture(scope="module")
def stored(fhir, fhir_base):
    """Three blood counts of one patient in 2024 and a correction of the
    second; the transaction-responses."""
    answers = []
    for n, (when, hgb, wbc) in enumerate(
        [("2024-02-10T08:00:00+01:00", 13.1, 7.2), ("2024-05-20T09:30:00+02:00", 14.4, 11.9), ("2024-11-03", 12.7, 6.1)]
    ):
        b = lab_bundle("PYFHIR-1", f"PYORD{n}", when, hgb, wbc, identifier=f"PYB{n}")
        r = post(fhir, fhir_base, b)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    fix = lab_bundle("PYFHIR-1", "PYORD1", "2024-05-20T09:30:00+02:00", 13.0, 11.9, identifier="PYB1C", corrected=True)
    r = post(fhir, fhir_base, fix)
    assert r.status_code == 200, r.text
    answers.append(r.json())
    return answers


def test_capability_statement_is_valid(fhir, fhir_base, smart):
    c = read(fhir, fhir_base + "/metadata")
    assert c["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in c["rest"][0]["resource"]}
    assert types == {"DiagnosticReport", "Observation", "Patient"}
    # fhirclient reads it too.
    smart.server.get_capability(force=True)
    assert smart.server.capabilityStatement.fhirVersion == "4.0.1"


def test_transaction_response_and_every_resource_read_back_are_valid(fhir, fhir_base, stored):
    for answer in stored:
        validate(answer)
        assert answer["type"] == "transaction-response"
        assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 4
        for e in answer["entry"]:
            assert e["fullUrl"] == f"{fhir_base}/{e['response']['location']}"
            read(fhir, e["fullUrl"])
    report = read(fhir, stored[0]["entry"][3]["fullUrl"])
    assert report["status"] == "final"
    assert report["effectiveDateTime"] == "2024-02-10T08:00:00+01:00"
    assert report["identifier"][0]["value"] == "PYORD0"
    hgb = read(fhir, f"{fhir_base}/{report['result'][0]['reference']}")
    assert hgb["valueQuantity"]["value"] == 13.1
    assert hgb["referenceRange"][0]["low"]["value"] == 12.0
    patient = read(fhir, f"{fhir_base}/{report['subject']['reference']}")
    assert patient["identifier"][0] == {"system": MRN, "value": "PYFHIR-1"}
    assert patient["birthDate"] == "1984-02-29"


def test_a_repost_is_answered_with_what_was_stored(fhir, fhir_base, stored):
    again = lab_bundle("PYFHIR-1", "PYORD0", "2024-02-10T08:00:00+01:00", 13.1, 7.2, identifier="PYB0")
    r = post(fhir, fhir_base, again)
    assert r.status_code == 200
    answer = validate(r.json())
    assert [e.response.status for e in answer.entry] == ["200 OK"] * 4
    assert [e.response.location for e in answer.entry] == [e["response"]["location"] for e in stored[0]["entry"]]


def test_a_diagnostic_report_with_contained_results_is_created(fhir, fhir_base):
    report = {
        "resourceType": "DiagnosticReport",
        "contained": [
            {"resourceType": "Patient", "id": "pat", "identifier": [{"system": MRN, "value": "PYFHIR-2"}]},
            {
                "resourceType": "Observation",
                "id": "k",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "2823-3"}]},
                "valueQuantity": {"value": 4.2, "unit": "mmol/L"},
            },
        ],
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "24326-1", "display": "Electrolytes panel"}]},
        "subject": {"reference": "#pat"},
        "effectiveDateTime": "2024-07-01T12:00:00Z",
        "result": [{"reference": "#k"}],
        "conclusion": "Potassium normal.",
    }
    validate(report)
    r = post(fhir, fhir_base + "/DiagnosticReport", report)
    assert r.status_code == 201, r.text
    created = validate(r.json())
    assert r.headers["Location"] == f"{fhir_base}/DiagnosticReport/{created.id}"
    assert created.conclusion == "Potassium normal."
    text = base64.b64decode(r.json()["presentedForm"][0]["data"]).decode()
    assert text == "Potassium normal."
    again = post(fhir, fhir_base + "/DiagnosticReport", report)
    assert again.status_code == 200
    assert again.json()["id"] == created.id


def test_fhirclient_searches_by_patient_code_and_date(smart, stored):
    server = smart.server
    hits = first_page(
        ClientDiagnosticReport.where(struct={"patient.identifier": f"{MRN}|PYFHIR-1", "code": f"{LOINC}|58410-2"}),
        server,
    )
    assert hits.total == 4
    for form in ["LN|58410-2", "58410-2"]:
        b = first_page(ClientDiagnosticReport.where(struct={"patient.identifier": f"{MRN}|PYFHIR-1", "code": form}), server)
        assert b.total == 4, form
    patient_ref = hits.entry[0].resource.subject.reference
    by_ref = first_page(ClientDiagnosticReport.where(struct={"patient": patient_ref}), server)
    assert by_ref.total == 4
    # Date prefixes: the May report and its correction are the only ones
    # in May; ge/le bound a range; fhirclient's $gte operator works too.
    may = first_page(ClientDiagnosticReport.where(struct={"patient": patient_ref, "date": "2024-05"}), server)
    assert may.total == 2
    since = first_page(ClientDiagnosticReport.where(struct={"patient": patient_ref, "date": {"$gte": "2024-05-20"}}), server)
    assert since.total == 3
    for params, expected in [
        ("date=ge2024-05-01&date=le2024-05-31", 2),
        ("date=gt2024-05-20", 1),
        ("date=lt2024-05-20", 1),
        ("date=eq2024-11-03", 1),
        ("date=ne2024-11-03", 3),
        ("date=2023", 0),
        ("date=le2024-02-10T08:00:00%2B01:00", 1),
    ]:
        b = server.request_json(f"DiagnosticReport?patient={patient_ref}&{params}")
        validate(b)
        assert b["total"] == expected, params
    corrected = first_page(ClientDiagnosticReport.where(struct={"patient": patient_ref, "status": "corrected"}), server)
    assert corrected.total == 1


def test_observation_search_gives_current_results_and_pages(smart, fhir, fhir_base, stored):
    server = smart.server
    patient_ref = stored[0]["entry"][0]["response"]["location"]
    hgb = first_page(ClientObservation.where(struct={"patient": patient_ref, "code": f"{LOINC}|718-7"}), server)
    # Three tests, the second corrected: three current values.
    assert hgb.total == 3
    values = sorted(e.resource.valueQuantity.value for e in hgb.entry)
    assert values == [12.7, 13.0, 13.1]
    assert {e.resource.status for e in hgb.entry} == {"final", "corrected"}
    # The earlier value is still readable by id, as it was stored.
    original = read(fhir, stored[1]["entry"][1]["fullUrl"])
    assert original["valueQuantity"]["value"] == 14.4
    assert original["status"] == "final"
    # Paging: fhirclient follows the next links.
    search = ClientObservation.where(struct={"patient": patient_ref, "_count": "2"})
    pages = list(search.perform_iter(server))
    assert len(pages) == 4
    ids = [e.resource.id for page in pages for e in (page.entry or [])]
    assert len(ids) == len(set(ids)) == 7
    # Every page is a valid searchset with self/next/previous links.
    url = f"{fhir_base}/Observation?patient={patient_ref}&_count=2"
    seen = 0
    while url:
        page = read(fhir, url)
        assert page["type"] == "searchset" and page["total"] == 7
        seen += len(page.get("entry", []))
        links = {l["relation"]: l["url"] for l in page["link"]}
        assert links["self"].startswith(fhir_base + "/Observation?")
        url = links.get("next")
    assert seen == 7


def test_unknown_search_parameters_are_reported(fhir, fhir_base, stored):
    b = read(fhir, f"{fhir_base}/Observation?code=718-7&_elements=id&colour=blue")
    outcome = [e for e in b["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert "colour" not in b["link"][0]["url"]
    r = fhir.get(f"{fhir_base}/Observation?colour=blue", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    validate(r.json())


@pytest.mark.parametrize(
    "method,path,body,content_type,status",
    [
        ("post", "", b"{oops", FHIR_JSON, 400),
        ("post", "/DiagnosticReport", b'{"resourceType": "Patient"}', FHIR_JSON, 400),
        ("post", "/DiagnosticReport", json.dumps({
            "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"},
            "subject": {"identifier": {"value": "PYFHIR-3"}}, "result": [{"reference": "#nothing"}]}).encode(), FHIR_JSON, 422),
        ("post", "/DiagnosticReport", json.dumps({
            "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"}}).encode(), FHIR_JSON, 422),
        ("post", "", b"<Bundle/>", "application/fhir+xml", 415),
        ("get", "/DiagnosticReport/987654321", None, None, 404),
        ("get", "/Encounter/1", None, None, 404),
    ],
)
def test_errors_are_valid_operation_outcomes(fhir, fhir_base, method, path, body, content_type, status):
    headers = {"Content-Type": content_type} if content_type else {}
    r = fhir.request(method, fhir_base + path, data=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == FHIR_JSON
    outcome = validate(r.json())
    assert outcome.issue[0].severity == "error"


def test_a_forged_token_is_an_operation_outcome(fhir_base):
    r = requests.get(fhir_base + "/DiagnosticReport", headers={"Authorization": "Bearer pacs_forged", "Accept": FHIR_JSON})
    assert r.status_code == 401
    outcome = validate(r.json())
    assert outcome.issue[0].code == "login"


def mllp_port(server):
    for line in server.log:
        m = re.search(r"HL7 on \S+:(\d+)", line)
        if m:
            return int(m.group(1))
    pytest.fail("pacs serve did not say where HL7 listens")


def test_an_oru_sent_with_mllp_send_reads_back_as_fhir(server, fhir, fhir_base, smart, tmp_path):
    mllp_send = Path(sys.executable).with_name("mllp_send")
    assert mllp_send.exists(), "mllp_send (pip install hl7) is missing"
    segments = [
        "MSH|^~\\&|PYLAB|PYTEST|PACS|RADIOLOGY|20240607101500||ORU^R01^ORU_R01|PYORU1|P|2.5.1",
        "PID|1||PYHL7-1^^^HOSP^MR||Tester^Ada||19800101|F",
        "OBR|1|PYPLAC1|PYFILL1|58410-2^CBC panel - Blood by Automated count^LN|||20240607093000"
        "|||||||||||||||20240607101500||HM|F",
        "OBX|1|NM|718-7^Hemoglobin [Mass/volume] in Blood^LN||13.2|g/dL^g/dL^UCUM|12.0-17.5|N|||F|||20240607093000",
        "OBX|2|NM|6690-2^Leukocytes [#/volume] in Blood^LN||11.2|10*9/L^10*9/L^UCUM|4.0-10.0|H|||F|||20240607093000",
        "OBX|3|ST|8251-1^Service comment^LN||Sample slightly lipaemic||||||F",
    ]
    frame = b"\x0b" + "\r".join(segments).encode() + b"\x1c\r"
    f = tmp_path / "oru.hl7"
    f.write_bytes(frame)
    out = subprocess.run(
        [str(mllp_send), "-p", str(mllp_port(server)), "-f", str(f), "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "MSA|AA|PYORU1" in out.stdout, out.stdout
    reports = first_page(ClientDiagnosticReport.where(struct={"patient:identifier": "HOSP|PYHL7-1"}), smart.server)
    assert reports.total == 1
    raw = read(fhir, f"{fhir_base}/DiagnosticReport/{reports.entry[0].resource.id}")
    assert raw["code"]["coding"][0] == {"system": LOINC, "code": "58410-2", "display": "CBC panel - Blood by Automated count"}
    assert raw["effectiveDateTime"] == "2024-06-07T09:30:00Z"
    assert raw["subject"]["identifier"] == {"system": "HOSP", "value": "PYHL7-1"}
    results = [read(fhir, f"{fhir_base}/{r['reference']}") for r in raw["result"]]
    assert results[0]["valueQuantity"] == {"value": 13.2, "unit": "g/dL"}
    assert results[1]["interpretation"][0]["coding"][0]["code"] == "H"
    assert results[2]["valueString"] == "Sample slightly lipaemic"
    by_code = first_page(ClientObservation.where(struct={"patient": raw["subject"]["reference"], "code": "LN|6690-2"}), smart.server)
    assert by_code.total == 1
    assert by_code.entry[0].resource.valueQuantity.value == 11.2
