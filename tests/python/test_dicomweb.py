"""pacs-lite's DICOMweb API driven by a real client (dicomweb-client),
requests for the raw HTTP details, and DCMTK for the DIMSE side; every
expectation is PS3.18's (or PS3.4's for C-FIND/C-GET)."""

import base64
import copy
import io
import json
import math
import os
import re
import socket
import subprocess
import unicodedata
from collections import defaultdict
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pydicom.pixels
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.uid import generate_uid

from conftest import (
    AE_TITLE,
    Instance,
    auth,
    check_stow_success,
    dcmtk_available,
    encode_like_dicomweb_client,
    multipart_related,
    part10_files,
    poll,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
NATIVE = {EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED}
ANY_TS_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
UNKNOWN_UID = "1.2.826.0.1.3680043.10.1234.999.999"
HTTP_TIMEOUT = 120


# --- helpers -----------------------------------------------------------------


def value(item, tag):
    """First value of `tag` in a DICOM JSON object, or None."""
    el = item.get(tag)
    if not el or not el.get("Value"):
        return None
    return el["Value"][0]


def values(item, tag):
    el = item.get(tag)
    return list(el.get("Value", [])) if el else []


def fold(text):
    """Case- and accent-insensitive form of a name."""
    nfd = unicodedata.normalize("NFD", text)
    return "".join(c for c in nfd if not unicodedata.combining(c)).casefold()


def wildcard_match(pattern, text):
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in fold(pattern))
    return re.fullmatch(rx, fold(text), re.S) is not None


def by_study(archive):
    studies = defaultdict(list)
    for inst in archive.values():
        studies[inst.study].append(inst)
    return studies


def study_uids(results):
    return [value(r, "0020000D") for r in results]


def sop_uids(results):
    return [value(r, "00080018") for r in results]


def pixels(ds):
    """pydicom's decoding (no colour conversion) of a data set's pixels."""
    return pydicom.pixels.pixel_array(ds, raw=True)


def expected_frames(ds):
    """Each frame of `ds` as pydicom decodes it, in the native (uncompressed,
    little endian) layout PS3.18 gives for application/octet-stream frames."""
    arr = pixels(ds)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.SamplesPerPixel)
    if n == 1:
        arr = arr[np.newaxis, ...]
    frames = []
    for f in arr:
        if spp > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
            f = np.moveaxis(f, -1, 0)
        f = np.ascontiguousarray(f)
        frames.append(f.astype(f.dtype.newbyteorder("<")).tobytes())
    return frames


def parse_multipart(response):
    """Parts (headers dict, body bytes) of a multipart/related response."""
    ctype = response.headers.get("Content-Type", "")
    assert ctype.lower().startswith("multipart/related"), ctype
    m = re.search(r'boundary="?([^";]+)"?', ctype, re.I)
    assert m, f"no boundary in {ctype!r}"
    delim = b"--" + m.group(1).encode()
    body = response.content
    chunks = body.split(b"\r\n" + delim)
    first = chunks[0]
    assert first.startswith(delim), body[:200]
    chunks[0] = first[len(delim):]
    parts = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        head, sep, data = chunk.partition(b"\r\n\r\n")
        assert sep, chunk[:200]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        parts.append((headers, data))
    return parts


def dataset_offset(part10):
    """Offset of the data set after the File Meta Information group."""
    assert part10[128:132] == b"DICM"
    pos = 132
    while pos < len(part10) and part10[pos : pos + 2] == b"\x02\x00":
        vr = part10[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            length = int.from_bytes(part10[pos + 8 : pos + 12], "little")
            pos += 12 + length
        else:
            length = int.from_bytes(part10[pos + 6 : pos + 8], "little")
            pos += 8 + length
    return pos


def assert_server_healthy(server, archive):
    """The server still runs, answers /healthz and still finds every study."""
    assert server.alive(), "pacs serve exited:\n" + "\n".join(server.log[-40:])
    r = requests.get(server.base_url + "/healthz", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.status_code
    r = requests.get(
        server.dicomweb + "/studies",
        headers={**auth(server.admin_token), "Accept": "application/dicom+json"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert set(study_uids(r.json())) >= set(by_study(archive)), "studies went missing"


def http_error_status(excinfo):
    return excinfo.value.response.status_code


def new_uids(ds, patient_name="Pytest^Fresh", patient_id="PYTEST-FRESH"):
    """A copy of `ds` that is a new object: new study, series and instance."""
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    return ds


def instances_of(archive, pred):
    return [i for i in archive.values() if pred(i)]


def one_per(archive, key, pred=lambda i: True):
    chosen = {}
    for inst in sorted(archive.values(), key=lambda i: (i.set, str(i.path))):
        if pred(inst):
            chosen.setdefault(key(inst), inst)
    return list(chosen.values())


@pytest.fixture(scope="session")
def archive(stored):
    """Every instance the archive is known to hold; tests that store more
    add theirs, so that search expectations stay exact."""
    return stored


# --- STOW-RS then QIDO-RS ----------------------------------------------------


def test_stow_stored_everything(archive, client):
    assert {i.set for i in archive.values()} >= {"stow", "le", "be"}
    tss = {i.ts for i in archive.values()}
    for ts in NATIVE | {JPEG_BASELINE, RLE}:
        assert ts in tss, f"fixtures lack transfer syntax {ts}"
    found = set(sop_uids(client.search_for_instances()))
    assert found == set(archive)


def test_qido_wildcards_on_patient_name(archive, client):
    studies = by_study(archive)
    names = {uid: str(insts[0].ds.PatientName) for uid, insts in studies.items()}
    assert "Müller^Jürgen" in names.values(), sorted(names.values())
    patterns = ["M*", "*ller^J*", "M?ller^J?rgen", "Unknown^Trauma ????", "*^*", "Z*q*"]
    for pattern in patterns:
        expected = {uid for uid, n in names.items() if wildcard_match(pattern, n)}
        got = study_uids(client.search_for_studies(search_filters={"PatientName": pattern}))
        assert len(got) == len(set(got)), f"{pattern}: duplicates"
        assert set(got) == expected, f"PatientName={pattern}"


def test_qido_non_ascii_names_case_and_accent_insensitive(archive, client):
    studies = by_study(archive)
    names = {uid: str(insts[0].ds.PatientName) for uid, insts in studies.items()}
    cases = {
        "Müller^Jürgen": ["müller*", "MÜLLER^JÜRGEN", "muller^jurgen", "MULLER*"],
        "Παπαδοπούλου^Ελένη": ["παπαδοπουλου*", "ΠΑΠΑΔΟΠΟΎΛΟΥ^ΕΛΈΝΗ", "*ελενη"],
        "Øvergård^Åse": ["øvergård^åse", "ØVERGARD*", "*^ase"],
        "Yamada^Tarou=山田^太郎=やまだ^たろう": ["yamada^tarou*", "YAMADA*"],
    }
    for name, queries in cases.items():
        expected = {uid for uid, n in names.items() if n == name}
        assert expected, f"no stored patient named {name}"
        for q in queries:
            got = set(study_uids(client.search_for_studies(search_filters={"PatientName": q})))
            assert expected <= got, f"PatientName={q} did not find {name}"
            others = {names[u] for u in got - expected}
            assert all(wildcard_match(q, n) for n in others), f"PatientName={q} found {others}"


def test_qido_date_ranges(archive, client):
    studies = by_study(archive)
    dates = {uid: insts[0].ds.StudyDate for uid, insts in studies.items()}
    ranges = {
        "20190101-20201231": lambda d: "20190101" <= d <= "20201231",
        "-20191231": lambda d: d <= "20191231",
        "20200101-": lambda d: d >= "20200101",
        sorted(dates.values())[0]: lambda d: d == sorted(dates.values())[0],
    }
    for query, pred in ranges.items():
        expected = {uid for uid, d in dates.items() if pred(d)}
        got = study_uids(client.search_for_studies(search_filters={"StudyDate": query}))
        assert set(got) == expected, f"StudyDate={query}"
        assert len(got) == len(set(got))
    assert 0 < len({uid for uid, d in dates.items() if "20190101" <= d <= "20201231"}) < len(dates)


def test_qido_uid_lists(archive, client):
    uids = sorted(by_study(archive))
    assert len(uids) >= 3
    pick = [uids[0], uids[-1]]
    for sep in (",", "\\"):
        got = study_uids(client.search_for_studies(search_filters={"StudyInstanceUID": sep.join(pick)}))
        assert sorted(got) == sorted(pick), f"separator {sep!r}"
    # Series level, inside one study.
    study = next(s for s, insts in by_study(archive).items() if len({i.series for i in insts}) >= 3)
    series = sorted({i.series for i in archive.values() if i.study == study})[:2]
    got = client.search_for_series(study, search_filters={"SeriesInstanceUID": ",".join(series)})
    assert sorted(value(r, "0020000E") for r in got) == series


def test_qido_paging_to_the_end(archive, client):
    full = study_uids(client.search_for_studies())
    assert sorted(full) == sorted(by_study(archive))
    pages, offset = [], 0
    while True:
        page = study_uids(client.search_for_studies(limit=2, offset=offset))
        if not page:
            break
        assert len(page) <= 2
        pages.extend(page)
        offset += 2
        assert offset <= 2 * len(full) + 2, "paging never ends"
    assert len(pages) == len(set(pages)), "a study came on two pages"
    assert pages == full, "pages are not the full list in its order"

    all_instances = sop_uids(client.search_for_instances())
    assert sorted(all_instances) == sorted(archive)
    got, offset = [], 0
    while True:
        page = sop_uids(client.search_for_instances(limit=7, offset=offset))
        if not page:
            break
        got.extend(page)
        offset += 7
        assert offset <= 2 * len(all_instances) + 7
    assert len(got) == len(set(got))
    assert set(got) == set(archive)


def test_qido_study_order_newest_first_and_stable(client):
    first = client.search_for_studies()
    second = client.search_for_studies()
    assert study_uids(first) == study_uids(second)
    keys = [(value(r, "00080020") or "", str(value(r, "00080030") or "")) for r in first]
    assert keys == sorted(keys, reverse=True), keys


def test_qido_modalities_in_study(archive, client):
    studies = by_study(archive)
    modalities = {uid: {i.ds.Modality for i in insts} for uid, insts in studies.items()}
    for modality in ("CT", "MR", "DX", "US", "SR"):
        expected = {uid for uid, m in modalities.items() if modality in m}
        assert expected, modality
        got = client.search_for_studies(search_filters={"ModalitiesInStudy": modality})
        assert set(study_uids(got)) == expected, f"ModalitiesInStudy={modality}"
    for r in client.search_for_studies(fields=["ModalitiesInStudy"]):
        uid = value(r, "0020000D")
        assert set(values(r, "00080061")) == modalities[uid], uid


def test_qido_series_by_modality(archive, client):
    series = defaultdict(set)
    for i in archive.values():
        series[i.ds.Modality].add(i.series)
    for modality in ("CT", "MR", "US", "DOC"):
        got = client.search_for_series(search_filters={"Modality": modality})
        uids = [value(r, "0020000E") for r in got]
        assert len(uids) == len(set(uids)) and set(uids) == series[modality], modality
        assert {value(r, "00080060") for r in got} == {modality}


def pn_json(pn):
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), str(pn).split("=")))
    return {k: v for k, v in groups.items() if v}


def test_qido_study_attributes_as_stored(archive, client):
    """Values come back as stored, whatever the character set (ISO_IR 100,
    ISO_IR 192, none)."""
    studies = by_study(archive)
    results = client.search_for_studies(fields=["StudyDescription", "PatientBirthDate"])
    assert set(study_uids(results)) == set(studies)
    for r in results:
        ds = studies[value(r, "0020000D")][0].ds
        assert {k: v for k, v in (value(r, "00100010") or {}).items() if v} == pn_json(ds.PatientName), ds.PatientName
        assert (value(r, "00100020") or "") == (ds.get("PatientID") or "")
        assert value(r, "00080020") == ds.StudyDate
        assert (value(r, "00080050") or "") == (ds.get("AccessionNumber") or "")
        assert (value(r, "00081030") or "") == (ds.get("StudyDescription") or "")
        assert (value(r, "00100030") or "") == (ds.get("PatientBirthDate") or "")


def test_qido_related_counts(archive, client):
    studies = by_study(archive)
    results = client.search_for_studies(
        fields=["NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries"]
    )
    assert set(study_uids(results)) == set(studies)
    for r in results:
        uid = value(r, "0020000D")
        assert int(value(r, "00201208")) == len(studies[uid]), uid
        assert int(value(r, "00201206")) == len({i.series for i in studies[uid]}), uid
    uid = sorted(studies)[0]
    series = client.search_for_series(uid, fields=["NumberOfSeriesRelatedInstances"])
    per_series = defaultdict(int)
    for i in studies[uid]:
        per_series[i.series] += 1
    assert {value(r, "0020000E"): int(value(r, "00201209")) for r in series} == per_series


def test_qido_instances_of_each_series(archive, client):
    series = defaultdict(set)
    for i in archive.values():
        series[(i.study, i.series)].add(i.sop)
    for (study, se), sops in series.items():
        got = sop_uids(client.search_for_instances(study, se))
        assert sorted(got) == sorted(sops), (study, se)


# --- WADO-RS ---------------------------------------------------------------


def assert_same_object(got, inst, same_ts=True):
    assert got.SOPInstanceUID == inst.sop
    assert got.SeriesInstanceUID == inst.series
    assert got.StudyInstanceUID == inst.study
    assert got.SOPClassUID == inst.ds.SOPClassUID
    got_ts = str(got.file_meta.TransferSyntaxUID)
    if same_ts:
        assert got_ts == inst.ts
    if "PixelData" not in inst.ds:
        assert "PixelData" not in got
    elif got_ts == inst.ts or inst.ts in NATIVE or inst.ts == RLE:
        # Same encoding, or a lossless one on either side: the same pixels.
        assert np.array_equal(pixels(got), pixels(inst.ds)), f"pixel data differ: {inst} as {got_ts}"
    else:
        # A lossy original decoded by the server: decoders may differ by a
        # little; the image must stay the same size.
        assert pixels(got).shape == pixels(inst.ds).shape, f"{inst} as {got_ts}"


def test_retrieve_instance_every_transfer_syntax(archive, client):
    chosen = one_per(archive, lambda i: (i.set, i.ts, i.ds.Modality))
    assert len(chosen) >= 10
    for inst in chosen:
        got = client.retrieve_instance(inst.study, inst.series, inst.sop)
        assert_same_object(got, inst)
        assert got == inst.ds, f"{inst}: data sets differ"


def test_retrieve_instance_as_explicit_little_endian(archive, client):
    """No transfer-syntax: PS3.18 says Explicit VR Little Endian for native
    objects; asked explicitly, the same."""
    chosen = one_per(archive, lambda i: (i.ts, i.ds.Modality), lambda i: i.ts in NATIVE - {EXPLICIT_LE})
    assert chosen
    for inst in chosen:
        got = client.retrieve_instance(
            inst.study, inst.series, inst.sop, media_types=(("application/dicom", EXPLICIT_LE),)
        )
        assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE, inst
        assert_same_object(got, inst, same_ts=False)


def test_retrieve_series_and_study(archive, client):
    studies = by_study(archive)
    for uid, insts in sorted(studies.items()):
        got = client.retrieve_study(uid, media_types=(("application/dicom", "*"),))
        assert sorted(d.SOPInstanceUID for d in got) == sorted(i.sop for i in insts), uid
        for d in got:
            assert_same_object(d, archive[d.SOPInstanceUID])
    series = defaultdict(list)
    for i in archive.values():
        series[(i.study, i.series)].append(i)
    for (study, se), insts in sorted(series.items()):
        # dicomweb-client's default Accept here names Explicit VR Little
        # Endian: native objects must come back in it, unchanged otherwise.
        got = client.retrieve_series(study, se)
        assert sorted(d.SOPInstanceUID for d in got) == sorted(i.sop for i in insts)
        for d in got:
            inst = archive[d.SOPInstanceUID]
            if inst.ts in NATIVE:
                assert str(d.file_meta.TransferSyntaxUID) == EXPLICIT_LE, inst
            assert_same_object(d, inst, same_ts=False)


def test_retrieve_is_byte_identical(server, archive, http):
    for uid, insts in sorted(by_study(archive).items()):
        r = http.get(
            f"{server.dicomweb}/studies/{uid}", headers={"Accept": ANY_TS_DICOM}, timeout=HTTP_TIMEOUT
        )
        assert r.status_code == 200, (uid, r.status_code, r.text[:300])
        parts = parse_multipart(r)
        assert len(parts) == len(insts), uid
        got = {}
        for headers, body in parts:
            assert headers.get("content-type", "").startswith("application/dicom"), headers
            got[pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID] = body
        for inst in insts:
            assert got[inst.sop] == inst.sent, f"{inst} ({inst.via}) is not byte-identical"
    inst = next(i for i in archive.values() if i.via == "raw")
    r = http.get(
        f"{server.dicomweb}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}",
        headers={"Accept": ANY_TS_DICOM},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200
    [(_, body)] = parse_multipart(r)
    assert body == inst.path.read_bytes()


def normalize_json_value(vr, el, swap):
    """Comparable form of one DICOM JSON attribute."""
    if "BulkDataURI" in el:
        return ("bulk",)
    if "InlineBinary" in el:
        data = base64.b64decode(el["InlineBinary"])
        width = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}.get(vr)
        if swap and width:
            data = np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()
        return ("inline", data)
    vals = el.get("Value", [])
    if vr == "SQ":
        return ("sq", [normalize_json(item, swap) for item in vals])
    if vr == "PN":
        out = []
        for v in vals:
            v = v or {}
            out.append(tuple((k, v[k]) for k in ("Alphabetic", "Ideographic", "Phonetic") if v.get(k)))
        return ("pn", out)
    if vr in ("IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        return ("num", [None if v is None else float(v) for v in vals])
    if vr == "AT":
        return ("at", [str(v).upper() for v in vals])
    return ("str", [None if v is None else str(v).rstrip(" \x00") for v in vals])


def normalize_json(obj, swap):
    out = {}
    for tag, el in obj.items():
        tag = tag.upper()
        if tag.endswith("0000") or tag.startswith("0002"):
            continue  # group lengths, file meta
        out[tag] = (el.get("vr"), normalize_json_value(el.get("vr"), el, swap))
    return out


def same_numbers(a, b):
    if a[0] != "num" or b[0] != "num" or len(a[1]) != len(b[1]):
        return a == b
    return all(
        x == y or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9))
        for x, y in zip(a[1], b[1])
    )


def diff_json(expected, got, path=""):
    problems = []
    for tag in sorted(set(expected) | set(got)):
        if tag not in got:
            problems.append(f"{path}{tag} missing")
            continue
        if tag not in expected:
            problems.append(f"{path}{tag} unexpected: {got[tag]}")
            continue
        (evr, ev), (gvr, gv) = expected[tag], got[tag]
        if evr != gvr:
            problems.append(f"{path}{tag} VR {gvr} instead of {evr}")
        elif ev[0] == "sq" and gv[0] == "sq" and len(ev[1]) == len(gv[1]):
            for k, (ei, gi) in enumerate(zip(ev[1], gv[1])):
                problems += diff_json(ei, gi, f"{path}{tag}[{k}].")
        elif not same_numbers(ev, gv):
            problems.append(f"{path}{tag}: {gv} instead of {ev}")
    return problems


def original_bulk_bytes(ds, keyword):
    """An original binary attribute's value as PS3.18 bulk data
    (application/octet-stream: little endian)."""
    el = ds[keyword]
    data = el.value
    if ds.file_meta.TransferSyntaxUID == EXPLICIT_BE:
        width = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}.get(el.VR)
        if keyword == "PixelData" and int(ds.BitsAllocated) == 8:
            width = None
        if width:
            data = np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()
    return data


def metadata_problems(inst, meta):
    """How DICOM JSON metadata differs from the original's attributes."""
    expected = inst.ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda el: "bulk")
    swap = inst.ts == EXPLICIT_BE
    return [f"{inst}: {p}" for p in diff_json(normalize_json(expected, swap), normalize_json(meta, False))]


def test_series_metadata_matches_originals(server, archive, client):
    series = defaultdict(list)
    for i in archive.values():
        series[(i.study, i.series)].append(i)
    problems = []
    for (study, se), insts in sorted(series.items()):
        meta = client.retrieve_series_metadata(study, se)
        by_sop = {value(m, "00080018"): m for m in meta}
        assert sorted(by_sop) == sorted(i.sop for i in insts), (study, se)
        for inst in insts:
            m = by_sop[inst.sop]
            problems += metadata_problems(inst, m)
            for tag, el in m.items():
                if "BulkDataURI" not in el:
                    continue
                uri = el["BulkDataURI"]
                split = urlsplit(uri)
                assert split.scheme in ("http", "https") and split.netloc, f"{inst} {tag}: {uri} is not absolute"
                assert uri.startswith(server.base_url), uri
                parts = client.retrieve_bulkdata(uri)
                assert parts and sum(len(p) for p in parts) > 0, uri
                keyword = pydicom.datadict.keyword_for_tag(int(tag, 16))
                if keyword == "PixelData" and inst.ts not in NATIVE:
                    continue  # encapsulated: fetchable is all PS3.18 fixes here
                assert b"".join(parts) == original_bulk_bytes(inst.ds, keyword), f"{inst} {keyword} bulk data"
    assert not problems, "\n".join(problems[:60])


def test_frames_match_pydicom(archive, client):
    chosen = one_per(
        archive,
        lambda i: (i.ts, i.ds.Modality, int(i.ds.get("NumberOfFrames", 1) or 1) > 1),
        lambda i: i.ts in NATIVE and "PixelData" in i.ds,
    )
    multi = [i for i in chosen if int(i.ds.get("NumberOfFrames", 1) or 1) > 1]
    assert {i.ts for i in multi} >= {EXPLICIT_LE, EXPLICIT_BE}, chosen
    assert EXPLICIT_BE in {i.ts for i in chosen}
    for inst in chosen:
        expected = expected_frames(inst.ds)
        numbers = list(range(1, len(expected) + 1))
        got = client.retrieve_instance_frames(
            inst.study,
            inst.series,
            inst.sop,
            frame_numbers=numbers,
            media_types=(("application/octet-stream", EXPLICIT_LE),),
        )
        assert len(got) == len(expected), inst
        for n, (g, e) in enumerate(zip(got, expected), start=1):
            assert len(g) == len(e) and g == e, f"{inst} frame {n}: {len(g)} bytes vs {len(e)}"
    # The client's default Accept (multipart/related; type="*/*" ...).
    inst = multi[0]
    expected = expected_frames(inst.ds)
    got = client.retrieve_instance_frames(inst.study, inst.series, inst.sop, frame_numbers=[2])
    assert got == [expected[1]]


def image_of(data):
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_rendered_jpeg_and_png(server, archive, client, http):
    chosen = one_per(
        archive,
        lambda i: i.ds.Modality,
        lambda i: "PixelData" in i.ds and int(i.ds.get("NumberOfFrames", 1) or 1) == 1,
    )
    assert len(chosen) >= 3
    for inst in chosen:
        size = (int(inst.ds.Columns), int(inst.ds.Rows))
        jpeg = image_of(client.retrieve_instance_rendered(inst.study, inst.series, inst.sop))
        assert jpeg.format == "JPEG" and jpeg.size == size, (inst, jpeg.format, jpeg.size)
        png = image_of(
            client.retrieve_instance_rendered(inst.study, inst.series, inst.sop, media_types=("image/png",))
        )
        assert png.format == "PNG" and png.size == size, (inst, png.format, png.size)
        assert len(set(np.asarray(png.convert("L")).ravel().tolist())) > 1, f"{inst}: flat rendering"
    us = next(i for i in archive.values() if int(i.ds.get("NumberOfFrames", 1) or 1) > 1)
    frame = client.retrieve_instance_frames_rendered(
        us.study, us.series, us.sop, frame_numbers=[2], media_types=("image/png",)
    )
    img = image_of(frame)
    assert img.format == "PNG" and img.size == (int(us.ds.Columns), int(us.ds.Rows))


def test_thumbnails(server, archive, http):
    inst = next(i for i in archive.values() if i.ds.Modality == "CT" and i.ts == EXPLICIT_LE)
    base = f"{server.dicomweb}/studies/{inst.study}/series/{inst.series}"
    urls = [
        f"{base}/thumbnail",
        f"{server.dicomweb}/studies/{inst.study}/thumbnail",
        f"{base}/instances/{inst.sop}/thumbnail",
    ]
    for url in urls:
        for accept, fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG"), (None, "JPEG")):
            headers = {"Accept": accept} if accept else {}
            r = http.get(url, headers=headers, timeout=HTTP_TIMEOUT)
            assert r.status_code == 200, (url, accept, r.status_code, r.text[:300])
            if accept:
                assert r.headers["Content-Type"].startswith(accept), r.headers["Content-Type"]
            img = image_of(r.content)
            assert img.format == fmt, (url, accept, img.format)
            w, h = img.size
            assert 16 <= max(w, h) <= 512, img.size
            assert max(w, h) < max(int(inst.ds.Columns), int(inst.ds.Rows)), img.size


def test_stow_answer_urls_fetch_the_stored_instances(server, archive, client, http):
    ds, data = fresh_instance(archive, "Stow^Answer")
    r = http.post(
        server.dicomweb + "/studies",
        data=multipart_related([data])[0],
        headers={"Content-Type": multipart_related([data])[1], "Accept": "application/dicom+json"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.headers["Content-Type"].startswith("application/dicom+json"), r.headers["Content-Type"]
    archive[ds.SOPInstanceUID] = Instance(None, data, pydicom.dcmread(io.BytesIO(data)), "raw", "extra")
    answer = pydicom.Dataset.from_json(r.json())
    assert str(answer.RetrieveURL).endswith(f"/studies/{ds.StudyInstanceUID}"), answer.RetrieveURL
    [ref] = answer.ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == ds.SOPClassUID
    assert urlsplit(ref.RetrieveURL).netloc, ref.RetrieveURL
    got = http.get(ref.RetrieveURL, headers={"Accept": ANY_TS_DICOM}, timeout=HTTP_TIMEOUT)
    assert got.status_code == 200, got.status_code
    [(_, body)] = parse_multipart(got)
    assert body == data
    got = http.get(answer.RetrieveURL, headers={"Accept": ANY_TS_DICOM}, timeout=HTTP_TIMEOUT)
    assert [b for _, b in parse_multipart(got)] == [data]


def test_stow_202_when_some_fail(server, archive, client, http):
    good, good_bytes = fresh_instance(archive, "Partly^Stored")
    victim = next(i for i in archive.values() if i.ds.Modality == "MR" and i.via == "dicomweb-client")
    changed = copy.deepcopy(victim.ds)
    changed.SeriesDescription = "CONFLICTING COPY"
    body, ctype = multipart_related([good_bytes, encode_like_dicomweb_client(changed)])
    r = http.post(
        server.dicomweb + "/studies",
        data=body,
        headers={"Content-Type": ctype, "Accept": "application/dicom+json"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 202, (r.status_code, r.text[:500])
    archive[good.SOPInstanceUID] = Instance(None, good_bytes, pydicom.dcmread(io.BytesIO(good_bytes)), "raw", "extra")
    answer = pydicom.Dataset.from_json(r.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [good.SOPInstanceUID]
    [failed] = answer.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == victim.sop and "FailureReason" in failed
    assert sop_uids(client.search_for_instances(search_filters={"SOPInstanceUID": good.SOPInstanceUID})) == [
        good.SOPInstanceUID
    ]
    got = http.get(
        f"{server.dicomweb}/studies/{victim.study}/series/{victim.series}/instances/{victim.sop}",
        headers={"Accept": ANY_TS_DICOM},
        timeout=HTTP_TIMEOUT,
    )
    assert [b for _, b in parse_multipart(got)] == [victim.sent]
    assert_server_healthy(server, archive)


def test_stow_to_a_study_refuses_instances_of_another(server, archive, client, http):
    target = sorted(by_study(archive))[0]
    ds, data = fresh_instance(archive, "Wrong^Study")
    body, ctype = multipart_related([data])
    r = http.post(
        f"{server.dicomweb}/studies/{target}",
        data=body,
        headers={"Content-Type": ctype, "Accept": "application/dicom+json"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 409, (r.status_code, r.text[:500])
    answer = pydicom.Dataset.from_json(r.json())
    # Failed SOP Sequence items name the refused instance: Referenced SOP
    # Class and Instance UID are Type 1 there (PS3.18 STOW-RS response).
    [item] = answer.FailedSOPSequence
    assert (item.get("ReferencedSOPInstanceUID"), item.get("ReferencedSOPClassUID")) == (
        ds.SOPInstanceUID,
        ds.SOPClassUID,
    ), f"FailedSOPSequence item without the refused instance's UIDs: {r.text}"
    assert "FailureReason" in item
    assert_not_stored(client, ds)
    assert_server_healthy(server, archive)


def test_qido_and_metadata_media_types(server, archive, http):
    r = http.get(server.dicomweb + "/studies", headers={"Accept": "application/dicom+json"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/dicom+json"), r.headers
    inst = next(iter(archive.values()))
    r = http.get(
        f"{server.dicomweb}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}/metadata",
        headers={"Accept": "application/dicom+json"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/dicom+json"), r.headers
    assert [value(m, "00080018") for m in r.json()] == [inst.sop]


def test_qido_fuzzymatching_finds_at_least_the_exact_matches(archive, client):
    for name in ("Müller^Jürgen", "Øvergård^Åse"):
        plain = set(study_uids(client.search_for_studies(search_filters={"PatientName": name})))
        fuzzy = set(study_uids(client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": name})))
        assert plain and fuzzy >= plain, name


def test_wado_uri(server, archive, http):
    inst = next(i for i in archive.values() if i.ds.Modality == "CT" and i.via == "dicomweb-client")
    params = {"requestType": "WADO", "studyUID": inst.study, "seriesUID": inst.series, "objectUID": inst.sop}
    r = http.get(server.base_url + "/wado", params=params, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("image/jpeg"), (r.status_code, r.headers)
    assert image_of(r.content).size == (int(inst.ds.Columns), int(inst.ds.Rows))
    r = http.get(
        server.base_url + "/wado",
        params={**params, "contentType": "application/dicom", "transferSyntax": inst.ts},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/dicom"), (r.status_code, r.headers)
    got = pydicom.dcmread(io.BytesIO(r.content))
    assert_same_object(got, inst)
    r = http.get(server.base_url + "/wado", params={**params, "objectUID": UNKNOWN_UID}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 404, r.status_code


def test_stow_of_an_identical_object_again_succeeds(server, archive, client, http):
    inst = next(i for i in archive.values() if i.via == "raw" and i.ds.Modality == "CT")
    body, ctype = multipart_related([inst.sent])
    r = http.post(
        server.dicomweb + "/studies",
        data=body,
        headers={"Content-Type": ctype, "Accept": "application/dicom+json"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, (r.status_code, r.text[:500])
    check_stow_success(r.json(), [inst.sop])
    got = sop_uids(client.search_for_instances(inst.study, inst.series))
    assert sorted(got) == sorted(i.sop for i in archive.values() if i.series == inst.series)


# --- DIMSE peers -------------------------------------------------------------


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    return out.returncode, out.stdout + out.stderr


def test_c_store_then_dicomweb(server, archive, client, fixtures_dir):
    dcmtk_available()
    files = part10_files(fixtures_dir / "cstore")
    originals = {}
    for p in files:
        ds = pydicom.dcmread(p)
        originals[ds.SOPInstanceUID] = (p, ds)
    assert not set(originals) & set(archive)
    # storescu proposes uncompressed syntaxes unless told otherwise (and may
    # convert native files among them); RLE and JPEG need their own runs.
    proposals = {RLE: ["-xr"], JPEG_BASELINE: ["-xy"]}
    groups = defaultdict(list)
    for p, ds in originals.values():
        groups[str(ds.file_meta.TransferSyntaxUID) if str(ds.file_meta.TransferSyntaxUID) in proposals else "native"].append(p)
    assert set(groups) == {"native", RLE, JPEG_BASELINE}, groups.keys()
    for key, paths in sorted(groups.items()):
        rc, out = run(
            ["storescu", "-aet", "PYTEST", "-aec", AE_TITLE, *proposals.get(key, []), "-R", "127.0.0.1",
             str(server.dicom_port), *map(str, paths)],
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        assert rc == 0, f"storescu ({key}): {out}"
    for p, ds in originals.values():
        archive[ds.SOPInstanceUID] = Instance(p, None, ds, "c-store", "cstore")
    studies = {ds.StudyInstanceUID for _, ds in originals.values()}

    # Searchable within a second, says the server; poll with a generous
    # deadline and report what each level found.
    state = {}

    def found():
        state["instances"] = set()
        for s in studies:
            state["instances"] |= set(sop_uids(client.search_for_instances(s)))
        state["all instances"] = set(originals) & set(sop_uids(client.search_for_instances()))
        state["studies"] = set(
            study_uids(client.search_for_studies(search_filters={"StudyInstanceUID": ",".join(studies)}))
        )
        state["patients"] = set()
        for name in {str(ds.PatientName) for _, ds in originals.values()}:
            state["patients"] |= set(study_uids(client.search_for_studies(search_filters={"PatientName": name})))
        return (
            state["instances"] == set(originals)
            and state["all instances"] == set(originals)
            and state["studies"] == studies
            and state["patients"] >= studies
        )

    assert poll(found, 10.0), f"C-STORE'd data not (all) searchable after 10 s: expected {len(studies)} studies, {len(originals)} instances; found {state}"
    for sop, (p, ds) in originals.items():
        r = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, sop)
        # Compressed objects went as they are: they must be stored so.
        assert_same_object(r, archive[sop], same_ts=archive[sop].ts not in NATIVE)
        assert r.PatientName == ds.PatientName
        meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, sop)
        problems = metadata_problems(archive[sop], meta)
        assert not problems, "\n".join(problems[:40])


def test_stow_then_c_find_and_c_get(server, archive, client, tmp_path):
    dcmtk_available()
    base = next(i for i in archive.values() if i.ds.Modality == "CT" and i.ts == EXPLICIT_LE)
    ds = new_uids(base.ds, "Dimse^Roundtrip", "PYTEST-DIMSE")
    sent = encode_like_dicomweb_client(ds)
    check_stow_success(client.store_instances([ds]), [ds.SOPInstanceUID])
    archive[ds.SOPInstanceUID] = Instance(base.path, sent, pydicom.dcmread(io.BytesIO(sent)), "dicomweb-client", "dimse")

    find_dir = tmp_path / "find"
    find_dir.mkdir()

    def c_find():
        for f in find_dir.glob("*"):
            f.unlink()
        rc, out = run(
            ["findscu", "-S", "-aet", "PYTEST", "-aec", AE_TITLE, "-X", "-od", str(find_dir),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
             "-k", "PatientName", "-k", "PatientID", "-k", "NumberOfStudyRelatedInstances",
             "127.0.0.1", str(server.dicom_port)]
        )
        assert rc == 0, out
        return [pydicom.dcmread(f) for f in sorted(find_dir.glob("rsp*.dcm"))]

    responses = poll(c_find, 10.0)
    assert len(responses) == 1, responses
    [rsp] = responses
    assert rsp.StudyInstanceUID == ds.StudyInstanceUID
    assert str(rsp.PatientName) == "Dimse^Roundtrip" and rsp.PatientID == "PYTEST-DIMSE"
    assert int(rsp.NumberOfStudyRelatedInstances) == 1

    get_dir = tmp_path / "get"
    get_dir.mkdir()
    rc, out = run(
        ["getscu", "-S", "+B", "+xe", "-aet", "PYTEST", "-aec", AE_TITLE, "-od", str(get_dir),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
         "127.0.0.1", str(server.dicom_port)]
    )
    assert rc == 0, out
    files = [f for f in get_dir.iterdir() if f.is_file()]
    assert len(files) == 1, (files, out)
    got = files[0].read_bytes()
    got_ds = pydicom.dcmread(files[0])
    assert got_ds.SOPInstanceUID == ds.SOPInstanceUID
    assert str(got_ds.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    assert got[dataset_offset(got):] == sent[dataset_offset(sent):], "C-GET data set is not byte-identical"


# --- errors ------------------------------------------------------------------


def test_401_without_or_with_forged_token(server, archive):
    url = server.dicomweb + "/studies"
    for headers in (
        {},
        {"Authorization": "Bearer pacs_" + "A" * 43},
        {"Authorization": "Bearer " + server.admin_token[:-1] + ("x" if server.admin_token[-1] != "x" else "y")},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
    ):
        r = requests.get(url, headers=headers, timeout=HTTP_TIMEOUT)
        assert r.status_code == 401, (headers, r.status_code)
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers
        body = r.json()
        assert body.get("status") == 401 and body.get("error"), body
    anonymous = DICOMwebClient(url=server.dicomweb)
    with pytest.raises(requests.HTTPError) as e:
        anonymous.search_for_studies()
    assert http_error_status(e) == 401
    r = requests.get(server.base_url + "/healthz", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    assert_server_healthy(server, archive)


def test_403_clinician_on_metrics(server, archive, clinician_client):
    r = requests.get(server.base_url + "/metrics", headers=auth(server.clinician_token), timeout=HTTP_TIMEOUT)
    assert r.status_code == 403, r.status_code
    r = requests.get(server.base_url + "/metrics", headers=auth(server.admin_token), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.status_code
    assert set(study_uids(clinician_client.search_for_studies())) >= set(by_study(archive))
    assert_server_healthy(server, archive)


def test_404_unknown_uids(server, archive, client):
    inst = next(iter(archive.values()))
    calls = [
        lambda: client.retrieve_study(UNKNOWN_UID),
        lambda: client.retrieve_series(inst.study, UNKNOWN_UID),
        lambda: client.retrieve_instance(inst.study, inst.series, UNKNOWN_UID),
        lambda: client.retrieve_study_metadata(UNKNOWN_UID),
        lambda: client.retrieve_instance_frames(inst.study, inst.series, UNKNOWN_UID, frame_numbers=[1]),
    ]
    for call in calls:
        with pytest.raises(requests.HTTPError) as e:
            call()
        assert http_error_status(e) == 404
    assert_server_healthy(server, archive)


def test_406_unacceptable_media_types(server, archive, http):
    inst = next(i for i in archive.values() if i.ds.Modality == "CT" and i.ts == EXPLICIT_LE)
    url = f"{server.dicomweb}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}/rendered"
    r = http.get(url, headers={"Accept": "image/gif"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 406, r.status_code
    r = http.get(server.dicomweb + "/studies", headers={"Accept": "application/xml"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 406, r.status_code
    assert_server_healthy(server, archive)


def test_409_conflicting_instance_leaves_original(server, archive, client, http):
    inst = next(i for i in archive.values() if i.ds.Modality == "CT" and i.via == "dicomweb-client")
    changed = copy.deepcopy(inst.ds)
    changed.SeriesDescription = "NOT THE ORIGINAL"
    with pytest.raises(requests.HTTPError) as e:
        client.store_instances([changed])
    assert http_error_status(e) == 409
    answer = pydicom.Dataset.from_json(e.value.response.json())
    failed = {item.ReferencedSOPInstanceUID: item for item in answer.FailedSOPSequence}
    assert set(failed) == {inst.sop}
    assert "FailureReason" in failed[inst.sop]
    r = http.get(
        f"{server.dicomweb}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}",
        headers={"Accept": ANY_TS_DICOM},
        timeout=HTTP_TIMEOUT,
    )
    [(_, body)] = parse_multipart(r)
    assert body == inst.sent, "the stored original changed"
    meta = client.retrieve_instance_metadata(inst.study, inst.series, inst.sop)
    assert value(meta, "0008103E") == inst.ds.get("SeriesDescription"), meta.get("0008103E")
    assert_server_healthy(server, archive)


def fresh_instance(archive, name):
    base = next(i for i in archive.values() if i.ds.Modality == "SR")
    ds = new_uids(base.ds, name, "PYTEST-" + name.upper().replace("^", "-"))
    return ds, encode_like_dicomweb_client(ds)


def assert_not_stored(client, ds):
    assert client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID}) == []
    assert client.search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID}) == []


def test_400_malformed_requests(server, archive, client):
    stow = server.dicomweb + "/studies"
    headers = auth(server.admin_token)

    ds, data = fresh_instance(archive, "No^Boundary")
    body, _ = multipart_related([data])
    r = requests.post(
        stow, data=body, headers={**headers, "Content-Type": 'multipart/related; type="application/dicom"'},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 400, ("missing boundary", r.status_code, r.text[:300])
    assert_not_stored(client, ds)
    assert_server_healthy(server, archive)

    ds, data = fresh_instance(archive, "Truncated^Part")
    body, ctype = multipart_related([data])
    cut = body.index(data) + len(data) // 2
    r = requests.post(stow, data=body[:cut], headers={**headers, "Content-Type": ctype}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 400, ("truncated part", r.status_code, r.text[:300])
    assert_not_stored(client, ds)
    assert_server_healthy(server, archive)

    for bad in ("-1", "abc"):
        r = requests.get(server.dicomweb + "/studies", params={"limit": bad}, headers=headers, timeout=HTTP_TIMEOUT)
        assert r.status_code == 400, (f"limit={bad}", r.status_code)
    assert_server_healthy(server, archive)


def test_415_stow_as_json(server, archive, client):
    ds, data = fresh_instance(archive, "Json^Body")
    r = requests.post(
        server.dicomweb + "/studies",
        data=json.dumps([ds.to_json_dict()]),
        headers={**auth(server.admin_token), "Content-Type": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 415, r.status_code
    assert_not_stored(client, ds)
    assert_server_healthy(server, archive)


def raw_http(server, head, body, half_close=True, timeout=60):
    """Send a hand-made request; return the status line (or None if the
    server closed without answering)."""
    host, port = urlsplit(server.base_url).hostname, urlsplit(server.base_url).port
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(head + body)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    return data.split(b"\r\n", 1)[0].decode("latin-1") if data else None


def test_stow_announcing_gigabytes_sends_a_few(server, archive, client):
    for announced in (5 * 1024**3, 900 * 1024**2):
        ds, data = fresh_instance(archive, f"Huge^Announced{announced // 1024**2}")
        body, ctype = multipart_related([data])
        body = body[: body.rindex(b"\r\n--")]  # one whole part, no closing delimiter
        head = (
            f"POST {urlsplit(server.dicomweb).path}/studies HTTP/1.1\r\n"
            f"Host: {urlsplit(server.base_url).netloc}\r\n"
            f"Authorization: Bearer {server.admin_token}\r\n"
            f"Content-Type: {ctype}\r\n"
            f"Content-Length: {announced}\r\n"
            "Accept: application/dicom+json\r\n"
            "\r\n"
        ).encode()
        status = raw_http(server, head, body)
        if status is not None:
            code = int(status.split()[1])
            assert 400 <= code < 500, f"Content-Length {announced}: {status}"
            if announced > 1024**3:
                assert code == 413, f"Content-Length {announced} over the limit: {status}"
        assert_not_stored(client, ds)
        assert_server_healthy(server, archive)
