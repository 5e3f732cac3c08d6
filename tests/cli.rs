//! The `pacs` command line end to end, as an operator runs it: import with
//! bad files mixed in, export byte-identical, verify, stats, and a SIGKILL in
//! the middle of an import.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pacs_fixtures::{DatasetSpec, Kind, ts};

fn pacs(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pacs"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run pacs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lines `stored\t<uid>\t<path>` of `import --list` output: uid -> path.
fn stored_lines(text: &str) -> HashMap<String, PathBuf> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            (parts.next()? == "stored").then(|| {
                let uid = parts.next().unwrap().to_owned();
                (uid, PathBuf::from(parts.next().unwrap()))
            })
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn import_reports_each_file_and_export_is_byte_identical() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    let data = work.path().join("data");
    let summary = pacs_fixtures::write_dir(&DatasetSpec::small(), &input).unwrap();

    let bad = input.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let good = pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 77).bytes;
    write(&bad, "empty.dcm", b"");
    write(&bad, "truncated.dcm", &good[..good.len() / 2]);
    write(
        &bad,
        "notes.txt",
        b"this is not a DICOM file, it is a note left in the folder\n",
    );

    let out = pacs(&data, &["import", input.to_str().unwrap(), "--list"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "refusals make exit 1\n{text}");
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("refused\t"))
        .collect();
    assert_eq!(refused.len(), 3, "{text}");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("empty.dcm") && l.contains("empty input"))
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("truncated.dcm") && l.contains("cannot be parsed"))
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("notes.txt") && l.contains("not a DICOM"))
    );
    let stored = stored_lines(&text);
    assert_eq!(stored.len(), summary.files, "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} stored, 0 duplicate, 3 refused", summary.files)),
        "{stderr}"
    );

    // A second import of the same files stores nothing new and succeeds.
    std::fs::remove_dir_all(&bad).unwrap();
    let again = pacs(&data, &["import", input.to_str().unwrap()]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains(&format!("0 stored, {} duplicate", summary.files))
    );

    let export = work.path().join("out");
    let out = pacs(&data, &["export", "--out", export.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (uid, source) in &stored {
        let exported = std::fs::read(export.join(format!("{uid}.dcm"))).unwrap();
        assert!(exported == std::fs::read(source).unwrap(), "{uid} differs");
    }
    assert_eq!(std::fs::read_dir(&export).unwrap().count(), stored.len());

    // Export of one study only.
    let one = pacs_fixtures::DatasetSpec::small().generate(0);
    let study_out = work.path().join("study");
    let out = pacs(
        &data,
        &[
            "export",
            "--out",
            study_out.to_str().unwrap(),
            "--study",
            &one.study_instance_uid,
        ],
    );
    assert!(out.status.success());
    let in_study = DatasetSpec::small()
        .iter()
        .filter(|f| f.study_instance_uid == one.study_instance_uid)
        .count();
    assert_eq!(std::fs::read_dir(&study_out).unwrap().count(), in_study);
    let out = pacs(
        &data,
        &[
            "export",
            "--out",
            study_out.to_str().unwrap(),
            "--study",
            "1.2.3.4.404",
        ],
    );
    assert!(!out.status.success());

    let out = pacs(&data, &["stats"]);
    assert!(
        stdout(&out).contains(&format!("instances       {}", summary.files)),
        "{}",
        stdout(&out)
    );

    let out = pacs(&data, &["verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!(
        "verified {} instances and 0 messages: {} intact, 0 damaged",
        summary.files, summary.files
    )));

    // Damage one blob on disk: verify names it and fails.
    let blob = walk(&data.join("objects/blobs"))
        .into_iter()
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&blob, bytes).unwrap();
    let out = pacs(&data, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("damaged\t"), "{}", stdout(&out));
    assert!(stdout(&out).contains(", 1 damaged"), "{}", stdout(&out));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}

#[test]
fn config_file_and_bad_config_are_reported() {
    let work = tempfile::tempdir().unwrap();
    let config = write(
        work.path(),
        "pacs.toml",
        b"[ingest]\nzstd_level = 1\nbogus = 2\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pacs"))
        .args(["--config", config.to_str().unwrap(), "--data-dir"])
        .arg(work.path().join("d"))
        .arg("stats")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
    let out = pacs(
        &work.path().join("d"),
        &["--config", "/nonexistent/pacs.toml", "stats"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn sigkill_during_import_loses_nothing_reported_as_stored() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    let data = work.path().join("data");
    let spec = DatasetSpec {
        patients: 4,
        studies_per_patient: 2,
        ct_slices: 24,
        ..DatasetSpec::small()
    };
    pacs_fixtures::write_dir(&spec, &input).unwrap();
    let total = spec.plan_len();

    let mut child = Command::new(env!("CARGO_BIN_EXE_pacs"))
        .arg("--data-dir")
        .arg(&data)
        .args(["import", "--list"])
        .arg(&input)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut reported = String::new();
    let mut stored_so_far = 0;
    let mut line = String::new();
    while stored_so_far < total / 3 {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.starts_with("stored\t") {
            stored_so_far += 1;
        }
        reported.push_str(&line);
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Whatever it managed to print before dying counts as reported too.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    reported.push_str(&rest);
    let stored = stored_lines(&reported);
    assert!(
        stored.len() >= total / 3 && stored.len() < total,
        "killed too late: {}",
        stored.len()
    );

    // After the crash: verify passes, and every reported file is there.
    let out = pacs(&data, &["verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let export = work.path().join("out");
    let out = pacs(&data, &["export", "--out", export.to_str().unwrap()]);
    assert!(out.status.success());
    for (uid, source) in &stored {
        let exported = std::fs::read(export.join(format!("{uid}.dcm")))
            .unwrap_or_else(|_| panic!("{uid} was reported stored but is gone"));
        assert!(exported == std::fs::read(source).unwrap());
    }
    // And the import can simply be run again to finish the job.
    let out = pacs(&data, &["import", input.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pacs(&data, &["stats"]);
    assert!(
        stdout(&out).contains(&format!("instances       {total}")),
        "{}",
        stdout(&out)
    );
}

/// pydicom's real-world sample files (odd transfer syntaxes, encodings,
/// broken files): every one is stored or refused with a reason, nothing
/// crashes, and what is stored comes back byte for byte.
#[test]
fn real_world_samples_from_pydicom() {
    let Some(python) = std::env::var_os("PACS_TEST_PYTHON") else {
        assert!(
            std::env::var_os("PACS_TEST_REQUIRE_PEERS").is_none(),
            "PACS_TEST_PYTHON not set; scripts/test sets it"
        );
        eprintln!("no Python with pydicom: skipping (run scripts/test)");
        return;
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import os, pydicom.data as d; print(os.path.join(os.path.dirname(d.__file__), 'test_files'))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = PathBuf::from(stdout(&out).trim());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let out = pacs(&data, &["import", samples.to_str().unwrap(), "--list"]);
    let text = stdout(&out);
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "crashed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = stored_lines(&text);
    assert!(
        stored.len() >= 30,
        "only {} samples stored:\n{text}",
        stored.len()
    );
    for line in text.lines().filter(|l| l.starts_with("refused\t")) {
        assert_eq!(
            line.split('\t').count(),
            3,
            "refusal without a reason: {line}"
        );
    }
    let export = work.path().join("out");
    assert!(
        pacs(&data, &["export", "--out", export.to_str().unwrap()])
            .status
            .success()
    );
    for (uid, source) in &stored {
        let exported = std::fs::read(export.join(format!("{uid}.dcm"))).unwrap();
        assert!(
            exported == std::fs::read(source).unwrap(),
            "{uid} from {} differs",
            source.display()
        );
    }
    assert!(pacs(&data, &["verify"]).status.success());
}
