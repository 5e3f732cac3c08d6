"""Fixtures of the DICOMweb client suite: a real `pacs serve` on loopback
with free ports, tokens, a `dicomweb_client.api.DICOMwebClient`, and the
fixture data stored once per session.

Environment (set by `tests/dicomweb_client.rs`, the way `cargo test` runs
this suite):
  PACS_BIN            the `pacs` binary (default: $CARGO_TARGET_DIR/debug/pacs,
                      then target/debug/pacs at the repository root)
  PACS_FIXTURES_DIR   generated fixtures, one sub-directory per data set (see
                      FIXTURE_SETS). Unset: generated here with the
                      `pacs-fixtures` binary found next to `pacs`.
  PACS_TEST_REQUIRE_PEERS  set: a missing DCMTK fails the DIMSE tests
                      instead of skipping them.
"""

import io
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

REPO = Path(__file__).resolve().parents[2]

# name -> pacs-fixtures arguments. tests/dicomweb_client.rs generates the same
# sets through the pacs-fixtures library (DatasetSpec::small() with these
# overrides); keep both in step.
#   stow:  every kind and transfer syntax (STOW'ed by dicomweb-client)
#   be:    Explicit VR Big Endian everywhere, incl. a multi-frame US
#          (STOW'ed as the original file bytes by a hand-built request)
#   le:    Explicit VR Little Endian everywhere, incl. a multi-frame US
#          (STOW'ed by dicomweb-client)
#   cstore: every kind and transfer syntax again (other UIDs), sent by DCMTK
#          storescu over DIMSE, never STOW'ed
FIXTURE_SETS = {
    "stow": ["--seed", "42"],
    "be": ["--seed", "7", "--patients", "4", "--transfer-syntax", "1.2.840.10008.1.2.2"],
    "le": ["--seed", "8", "--patients", "4", "--transfer-syntax", "1.2.840.10008.1.2.1"],
    "cstore": ["--seed", "9", "--patients", "4"],
}

START_TIMEOUT = 120
ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SERVERS = []
AE_TITLE = "PACS"


def _find_pacs_bin():
    if os.environ.get("PACS_BIN"):
        return Path(os.environ["PACS_BIN"])
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "pacs")
    candidates.append(REPO / "target" / "debug" / "pacs")
    candidates.append(Path.home() / ".cache" / "pacs-lite" / "target" / "debug" / "pacs")
    for c in candidates:
        if c.is_file():
            return c
    pytest.exit("no pacs binary: set PACS_BIN or run `cargo test -p pacs --test dicomweb_client`", 2)


@pytest.fixture(scope="session")
def pacs_bin():
    return _find_pacs_bin()


@pytest.fixture(scope="session")
def fixtures_dir(pacs_bin, tmp_path_factory):
    if os.environ.get("PACS_FIXTURES_DIR"):
        root = Path(os.environ["PACS_FIXTURES_DIR"])
        missing = [n for n in FIXTURE_SETS if not (root / n).is_dir()]
        assert not missing, f"PACS_FIXTURES_DIR={root} lacks {missing}"
        return root
    gen = pacs_bin.parent / "pacs-fixtures"
    if not gen.is_file():
        pytest.exit(f"set PACS_FIXTURES_DIR or build {gen} (cargo build -p pacs-fixtures)", 2)
    root = tmp_path_factory.mktemp("fixtures")
    for name, args in FIXTURE_SETS.items():
        subprocess.run(
            [str(gen), "generate", "--out", str(root / name), *args],
            check=True,
            capture_output=True,
        )
    return root


def part10_files(directory):
    return sorted(p for p in Path(directory).rglob("*.dcm") if p.is_file())


class Server:
    """A running `pacs serve` and what it printed."""

    def __init__(self, pacs_bin, data_dir):
        self.pacs_bin = pacs_bin
        self.data_dir = data_dir
        self.log = []
        self.admin_token = self.issue("admin", "pytest-admin")
        self.clinician_token = self.issue("clinician", "pytest-clinician")
        env = dict(os.environ)
        env.update(
            {
                "PACS_DICOM__LISTEN_ADDRESS": "127.0.0.1",
                "PACS_HTTP__LISTEN_ADDRESS": "127.0.0.1",
                "PACS_MLLP__LISTEN_ADDRESS": "127.0.0.1",
                "PACS_DICOM__ACCEPT_ANY_CALLING_AE": "true",
                "RUST_LOG": env.get("RUST_LOG", "info"),
                "NO_COLOR": "1",
            }
        )
        self.proc = subprocess.Popen(
            [
                str(pacs_bin),
                "--data-dir",
                str(data_dir),
                "serve",
                "--dicom-port",
                "0",
                "--http-port",
                "0",
                "--mllp-port",
                "0",
                "--ae-title",
                AE_TITLE,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        started = threading.Event()
        self.dicom_port = None
        self.base_url = None

        def pump():
            for raw in self.proc.stderr:
                line = ANSI.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
                self.log.append(line)
                m = re.search(
                    r"pacs serve: DICOM on \S+:(\d+) .*HTTP on \S+ \((http://[^)\s]+)\)", line
                )
                if m and not started.is_set():
                    self.dicom_port = int(m.group(1))
                    self.base_url = m.group(2).rstrip("/")
                    started.set()
            started.set()

        threading.Thread(target=pump, daemon=True).start()
        if not started.wait(START_TIMEOUT) or self.base_url is None:
            self.stop()
            raise RuntimeError("pacs serve did not start:\n" + "\n".join(self.log[-50:]))

    def issue(self, role, name):
        out = subprocess.run(
            [str(self.pacs_bin), "--data-dir", str(self.data_dir), "token", "issue",
             "--role", role, "--name", name],
            check=True,
            capture_output=True,
            text=True,
        )
        token = out.stdout.strip()
        assert token and "\n" not in token, out
        return token

    @property
    def dicomweb(self):
        return self.base_url + "/dicom-web"

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def server(pacs_bin, tmp_path_factory):
    srv = Server(pacs_bin, tmp_path_factory.mktemp("pacs-data") / "data")
    _SERVERS.append(srv)
    yield srv
    srv.stop()
    _SERVERS.remove(srv)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with what the server logged last."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SERVERS:
        srv = _SERVERS[-1]
        state = "running" if srv.alive() else f"exited with {srv.proc.returncode}"
        report.sections.append(
            (f"pacs serve ({state}): last 40 log lines", "\n".join(srv.log[-40:]))
        )


def auth(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def client(server):
    return DICOMwebClient(url=server.dicomweb, headers=auth(server.admin_token))


@pytest.fixture(scope="session")
def clinician_client(server):
    return DICOMwebClient(url=server.dicomweb, headers=auth(server.clinician_token))


@pytest.fixture()
def http(server):
    """A requests session with the admin token."""
    s = requests.Session()
    s.headers.update(auth(server.admin_token))
    yield s
    s.close()


def encode_like_dicomweb_client(ds):
    """The bytes dicomweb-client's store_instances sends for `ds`."""
    with io.BytesIO() as b:
        pydicom.dcmwrite(b, ds)
        return b.getvalue()


def multipart_related(parts, boundary="pacs-lite-test-boundary-7d2f", content_type="application/dicom"):
    body = bytearray()
    for p in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        body += p
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    header = f'multipart/related; type="{content_type}"; boundary={boundary}'
    return bytes(body), header


class Instance:
    """One stored instance: its original file, the exact bytes sent, and how."""

    def __init__(self, path, sent, dataset, via, fixture_set):
        self.path = path
        self.sent = sent
        self.ds = dataset
        self.via = via
        self.set = fixture_set

    @property
    def study(self):
        return self.ds.StudyInstanceUID

    @property
    def series(self):
        return self.ds.SeriesInstanceUID

    @property
    def sop(self):
        return self.ds.SOPInstanceUID

    @property
    def ts(self):
        return str(self.ds.file_meta.TransferSyntaxUID)

    def __repr__(self):
        name = self.path.name if self.path else "-"
        return f"<{self.set}:{name} {self.ts} {self.sop}>"


@pytest.fixture(scope="session")
def stored(server, client, fixtures_dir):
    """Everything STOW'ed at the start: the `stow` and `le` sets through
    dicomweb-client, the `be` set as the original files in one hand-built
    multipart request. Returns {SOPInstanceUID: Instance}."""
    instances = {}
    for name in ("stow", "le"):
        files = part10_files(fixtures_dir / name)
        assert files, f"no fixtures in {fixtures_dir / name}"
        datasets = [pydicom.dcmread(p) for p in files]
        sent = [encode_like_dicomweb_client(ds) for ds in datasets]
        result = client.store_instances(datasets)
        check_stow_success(result, [ds.SOPInstanceUID for ds in datasets])
        for p, ds, b in zip(files, datasets, sent):
            instances[ds.SOPInstanceUID] = Instance(p, b, pydicom.dcmread(io.BytesIO(b)), "dicomweb-client", name)
    files = part10_files(fixtures_dir / "be")
    raw = [p.read_bytes() for p in files]
    body, ctype = multipart_related(raw)
    r = requests.post(
        server.dicomweb + "/studies",
        data=body,
        headers={**auth(server.admin_token), "Content-Type": ctype, "Accept": "application/dicom+json"},
        timeout=300,
    )
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    datasets = [pydicom.dcmread(io.BytesIO(b)) for b in raw]
    check_stow_success(r.json(), [ds.SOPInstanceUID for ds in datasets])
    for p, ds, b in zip(files, datasets, raw):
        instances[ds.SOPInstanceUID] = Instance(p, b, ds, "raw", "be")
    return instances


def check_stow_success(result, sop_uids):
    """A STOW-RS answer (DICOM JSON, as a dict or pydicom Dataset) that
    references every one of sop_uids, fails none, and gives absolute URLs."""
    if not isinstance(result, pydicom.Dataset):
        result = pydicom.Dataset.from_json(result)
    assert "FailedSOPSequence" not in result or len(result.FailedSOPSequence) == 0, result
    refs = {item.ReferencedSOPInstanceUID: item for item in result.ReferencedSOPSequence}
    assert set(refs) == set(sop_uids)
    for item in refs.values():
        assert str(item.RetrieveURL).startswith("http"), item


def dcmtk_available():
    tools = ["storescu", "findscu", "getscu"]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        if os.environ.get("PACS_TEST_REQUIRE_PEERS"):
            pytest.fail(f"DCMTK is missing ({', '.join(missing)}); apt-get install dcmtk")
        pytest.skip(f"DCMTK is missing ({', '.join(missing)})")


def poll(fn, deadline_s=10.0, interval=0.1):
    """Call fn until it returns a truthy value or the deadline passes; return
    its last value."""
    end = time.monotonic() + deadline_s
    while True:
        value = fn()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)
