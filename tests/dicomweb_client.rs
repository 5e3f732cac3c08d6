//! The DICOMweb and FHIR APIs as real, independent clients see them: runs
//! the pytest suite in `tests/python` (dicomweb-client, requests, pydicom,
//! Pillow and DCMTK; fhir.resources, fhirclient and mllp_send for FHIR)
//! against a `pacs serve` on loopback with free ports.
//!
//! Needs `$PACS_TEST_PYTHON` with pydicom, dicomweb-client, pytest,
//! requests, numpy, Pillow, hl7, fhir.resources and fhirclient
//! (scripts/test installs them). Without it the
//! test is skipped, unless `PACS_TEST_REQUIRE_PEERS` is set: then it fails.
//! The fixtures are generated here through the pacs-fixtures library;
//! `tests/python/conftest.py` (FIXTURE_SETS) describes the same sets for
//! runs of pytest by hand.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pacs_fixtures::{DatasetSpec, ts};

/// The whole suite takes seconds; this only bounds a hung server.
const TIMEOUT: Duration = Duration::from_secs(20 * 60);

const IMPORTS: &str = "import pydicom, dicomweb_client, pytest, requests, numpy, PIL, hl7, \
     fhirclient; from fhir.resources.R4B import get_fhir_model_class";

fn skip_or_fail(why: &str) {
    assert!(
        std::env::var_os("PACS_TEST_REQUIRE_PEERS").is_none(),
        "PACS_TEST_REQUIRE_PEERS is set but {why} (scripts/test installs it)"
    );
    eprintln!("skipping: {why} (run scripts/test)");
}

/// `$PACS_TEST_PYTHON`, if set and able to import every package the suite
/// uses.
fn python() -> Option<String> {
    let python = match std::env::var("PACS_TEST_PYTHON") {
        Ok(p) if !p.trim().is_empty() => p,
        _ => {
            skip_or_fail("PACS_TEST_PYTHON is not set");
            return None;
        }
    };
    match Command::new(&python).args(["-c", IMPORTS]).output() {
        Ok(out) if out.status.success() => Some(python),
        Ok(out) => {
            skip_or_fail(&format!(
                "{python} lacks a package of `{IMPORTS}`: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
            None
        }
        Err(e) => {
            skip_or_fail(&format!("{python} does not run: {e}"));
            None
        }
    }
}

/// The fixture sets of tests/python/conftest.py (FIXTURE_SETS).
fn write_fixtures(root: &Path) {
    let small = DatasetSpec::small();
    let sets = [
        ("stow", small.clone()),
        (
            "be",
            DatasetSpec {
                seed: 7,
                patients: 4,
                transfer_syntax: Some(ts::EXPLICIT_VR_BE),
                ..small.clone()
            },
        ),
        (
            "le",
            DatasetSpec {
                seed: 8,
                patients: 4,
                transfer_syntax: Some(ts::EXPLICIT_VR_LE),
                ..small.clone()
            },
        ),
        (
            "cstore",
            DatasetSpec {
                seed: 9,
                patients: 4,
                ..small
            },
        ),
    ];
    for (name, spec) in sets {
        pacs_fixtures::write_dir(&spec, &root.join(name))
            .unwrap_or_else(|e| panic!("writing fixture set {name}: {e:#}"));
    }
}

#[test]
fn dicomweb_client_suite() {
    let Some(python) = python() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let fixtures = work.path().join("fixtures");
    write_fixtures(&fixtures);
    let log_path = work.path().join("pytest.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(&python)
        .args(["-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"])
        .arg("--basetemp")
        .arg(work.path().join("pytest"))
        .arg(repo.join("tests/python"))
        .current_dir(repo)
        .env("PACS_BIN", env!("CARGO_BIN_EXE_pacs"))
        .env("PACS_FIXTURES_DIR", &fixtures)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TCP_NODELAY", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        // Own process group: on a timeout, pytest and the `pacs serve` it
        // started go together.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("running {python} -m pytest: {e}"));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        None => panic!("pytest did not finish within {TIMEOUT:?}:\n{output}"),
        Some(s) if !s.success() => panic!("pytest failed ({s}):\n{output}"),
        Some(_) => println!("{output}"),
    }
}
