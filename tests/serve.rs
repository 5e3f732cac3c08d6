//! `pacs serve` as an operator runs it: a subprocess on a free port, real
//! DCMTK peers, SIGTERM for a graceful stop, SIGKILL for durability.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pacs_fixtures::{DatasetSpec, FixtureFile, ts};

const TIMEOUT: Duration = Duration::from_secs(300);

/// DCMTK present? Required (test fails) when PACS_TEST_REQUIRE_PEERS is set.
fn dcmtk() -> bool {
    if Path::new("/usr/bin/storescu").exists() && Path::new("/usr/bin/echoscu").exists() {
        return true;
    }
    if std::env::var_os("PACS_TEST_REQUIRE_PEERS").is_some() {
        panic!("DCMTK is missing (apt-get install dcmtk)");
    }
    eprintln!("skipping: DCMTK is missing (apt-get install dcmtk)");
    false
}

struct Serve {
    child: Child,
    port: u16,
    http_port: u16,
    mllp_port: u16,
    log: mpsc::Receiver<String>,
}

/// Start `pacs serve` on a free loopback port, accepting any calling AE.
fn start(data: &Path) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pacs"))
        .args(["--data-dir"])
        .arg(data)
        .args([
            "serve",
            "--dicom-port",
            "0",
            "--http-port",
            "0",
            "--mllp-port",
            "0",
        ])
        .args(["--ae-title", "TESTPACS"])
        .env("PACS_DICOM__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_HTTP__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_MLLP__LISTEN_ADDRESS", "127.0.0.1")
        .env("PACS_DICOM__ACCEPT_ANY_CALLING_AE", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pacs serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (port, http_port, mllp_port) = loop {
        let line = rx.recv_timeout(TIMEOUT).expect("pacs serve did not start");
        if let Some(rest) = line.strip_prefix("pacs serve: DICOM on 127.0.0.1:") {
            let dicom = rest.split(' ').next().unwrap().parse().unwrap();
            let http = rest
                .split("HTTP on 127.0.0.1:")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .expect("the HTTP address is announced")
                .parse()
                .unwrap();
            let mllp = rest
                .split("HL7 on 127.0.0.1:")
                .nth(1)
                .and_then(|r| r.split([' ', ',']).next())
                .expect("the HL7 address is announced")
                .parse()
                .unwrap();
            break (dicom, http, mllp);
        }
    };
    Serve {
        child,
        port,
        http_port,
        mllp_port,
        log: rx,
    }
}

/// A server that outlives a failed test would hold the test's pipes open.
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn storescu(port: u16, options: &[&str], files: &[&str]) -> (bool, String) {
    let out = Command::new("/usr/bin/storescu")
        .env("TCP_NODELAY", "1")
        .args(["-aet", "MODALITY", "-aec", "TESTPACS"])
        .args(options)
        .args(["127.0.0.1", &port.to_string()])
        .args(files)
        .stdin(Stdio::null())
        .output()
        .expect("run storescu");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn pacs(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pacs"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} failed");
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pacs serve did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn explicit_files() -> Vec<FixtureFile> {
    DatasetSpec::small()
        .iter()
        .filter(|f| f.transfer_syntax == ts::EXPLICIT_VR_LE)
        .collect()
}

#[test]
fn serve_stores_then_stops_gracefully_on_sigterm() {
    if !dcmtk() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let input = work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let files = explicit_files();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(input.join(format!("{i}.dcm")), &f.bytes).unwrap();
    }
    let (ok, token) = pacs(
        &data,
        &["token", "issue", "--role", "admin", "--name", "ops"],
    );
    assert!(ok, "{token}");
    let mut serve = start(&data);
    let (ok, out) = storescu(serve.port, &["-xe", "+sd"], &[input.to_str().unwrap()]);
    assert!(ok, "{out}");
    // The operator's view: gateway and ingest counters in the metrics.
    let (status, metrics) = http_get(serve.http_port, token.trim(), "/metrics");
    assert_eq!(status, 200, "{metrics}");
    for line in [
        format!("pacs_dicom_instances_stored_total {}", files.len()),
        format!("pacs_ingest_stored_total {}", files.len()),
        "pacs_dicom_associations_active 0".to_owned(),
    ] {
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
    signal(&serve.child, "TERM");
    let status = wait(&mut serve.child);
    assert!(status.success(), "{status:?}");
    let log: Vec<String> = serve.log.try_iter().collect();
    let log = log.join("\n");
    assert!(log.contains("association opened"), "{log}");
    assert!(log.contains("instance stored"), "{log}");
    assert!(
        log.contains(&format!("{} instances stored", files.len())),
        "{log}"
    );
    let (ok, out) = pacs(&data, &["verify"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("verified {} instances", files.len())),
        "{out}"
    );
}

#[test]
fn sigkill_during_stores_loses_no_acknowledged_instance() {
    if !dcmtk() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    let mut serve = start(&data);
    // Three storescu runs in flight, each sending every Explicit-LE file of
    // its share one by one with a verbose log naming each acknowledged file.
    let explicit: Vec<&FixtureFile> = files
        .iter()
        .filter(|f| f.transfer_syntax == ts::EXPLICIT_VR_LE)
        .collect();
    let mut runs = Vec::new();
    for k in 0..3 {
        let dir = work.path().join(format!("in{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut paths = Vec::new();
        for (i, f) in explicit.iter().enumerate().filter(|(i, _)| i % 3 == k) {
            let p = dir.join(format!("{i}.dcm"));
            std::fs::write(&p, &f.bytes).unwrap();
            paths.push((p, f.sop_instance_uid.clone()));
        }
        let child = Command::new("/usr/bin/storescu")
            .env("TCP_NODELAY", "1")
            .args(["-v", "-aet", "MODALITY", "-aec", "TESTPACS", "-xe"])
            .args(["127.0.0.1", &serve.port.to_string()])
            .args(paths.iter().map(|(p, _)| p.as_os_str()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        runs.push((child, paths));
    }
    // Kill as soon as some storescu has surely seen a success: each sends
    // its next file only after the response to the previous one, so once
    // the three runs have stored four instances, one run has had a
    // response.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut stored = 0;
    while stored < 4 {
        let line = serve
            .log
            .recv_timeout(deadline - std::time::Instant::now())
            .expect("too little was stored");
        if line.contains("instance stored") {
            stored += 1;
        }
    }
    signal(&serve.child, "KILL");
    wait(&mut serve.child);
    // Every file that storescu saw acknowledged with Success must be there.
    let mut acknowledged = Vec::new();
    for (child, paths) in runs {
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // storescu -v prints "Sending file: PATH" then
        // "Received Store Response (Success)" for each acknowledged file.
        let mut current: Option<&str> = None;
        for line in text.lines() {
            if let Some(p) = line.split("Sending file: ").nth(1) {
                current = paths
                    .iter()
                    .find(|(path, _)| path.to_str() == Some(p.trim()))
                    .map(|(_, uid)| uid.as_str());
            } else if line.contains("Received Store Response (Success)")
                && let Some(uid) = current.take()
            {
                acknowledged.push(uid.to_owned());
            }
        }
    }
    assert!(!acknowledged.is_empty());
    let (ok, out) = pacs(&data, &["verify"]);
    assert!(ok, "{out}");
    let export = work.path().join("export");
    let (ok, out) = pacs(&data, &["export", "--out", export.to_str().unwrap()]);
    assert!(ok, "{out}");
    for uid in &acknowledged {
        assert!(
            export.join(format!("{uid}.dcm")).is_file(),
            "{uid} was acknowledged but is not in the archive"
        );
    }
}

/// A GET with a bearer token; the status and the body.
fn http_get(port: u16, token: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// One STOW-RS request of one object over a fresh connection; the HTTP
/// status, or `None` when the connection failed (the server was killed).
fn stow_one(port: u16, token: &str, part10: &[u8]) -> Option<u16> {
    use std::io::{Read, Write};
    let mut body = Vec::with_capacity(part10.len() + 200);
    body.extend_from_slice(b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n");
    body.extend_from_slice(part10);
    body.extend_from_slice(b"\r\n--b0undary--\r\n");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(TIMEOUT)).ok()?;
    let head = format!(
        "POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/related; type=\"application/dicom\"; boundary=b0undary\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(&body).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[test]
fn sigkill_during_stow_loses_no_acknowledged_instance() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let (ok, token) = pacs(
        &data,
        &["token", "issue", "--role", "clinician", "--name", "t"],
    );
    assert!(ok, "{token}");
    let token = token.trim().to_owned();
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    let mut serve = start(&data);
    let (acked_tx, acked_rx) = mpsc::channel::<String>();
    let mut senders = Vec::new();
    for k in 0..3 {
        let share: Vec<FixtureFile> = files.iter().skip(k).step_by(3).cloned().collect();
        let (port, token, acked) = (serve.http_port, token.clone(), acked_tx.clone());
        senders.push(std::thread::spawn(move || {
            for f in share {
                match stow_one(port, &token, &f.bytes) {
                    Some(200) => acked.send(f.sop_instance_uid.clone()).unwrap(),
                    Some(status) => panic!("STOW of {} answered {status}", f.file_name),
                    None => return,
                }
            }
        }));
    }
    drop(acked_tx);
    // Kill as soon as one STOW has been acknowledged.
    let first = acked_rx
        .recv_timeout(TIMEOUT)
        .expect("no STOW was acknowledged");
    signal(&serve.child, "KILL");
    wait(&mut serve.child);
    for s in senders {
        s.join().unwrap();
    }
    let mut acknowledged = vec![first];
    acknowledged.extend(acked_rx.try_iter());
    let (ok, out) = pacs(&data, &["verify"]);
    assert!(ok, "{out}");
    let export = work.path().join("export");
    let (ok, out) = pacs(&data, &["export", "--out", export.to_str().unwrap()]);
    assert!(ok, "{out}");
    for uid in &acknowledged {
        assert!(
            export.join(format!("{uid}.dcm")).is_file(),
            "{uid} was acknowledged by STOW-RS but is not in the archive"
        );
    }
    // After a restart the search index has caught up with them too.
    let serve = start(&data);
    for uid in &acknowledged {
        let f = files.iter().find(|f| &f.sop_instance_uid == uid).unwrap();
        let (status, body) = http_get(
            serve.http_port,
            &token,
            &format!(
                "/dicom-web/studies?StudyInstanceUID={}",
                f.study_instance_uid
            ),
        );
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&f.study_instance_uid),
            "{uid}: study not found: {body}"
        );
    }
    drop(serve);
}

/// `mllp_send` (the Python `hl7` package's MLLP client) next to the test
/// Python; `None` (skip) when absent unless peers are required.
fn mllp_send() -> Option<std::path::PathBuf> {
    let bin = std::env::var_os("PACS_TEST_PYTHON")
        .map(|p| std::path::PathBuf::from(p).with_file_name("mllp_send"))
        .filter(|b| b.exists());
    if bin.is_none() {
        assert!(
            std::env::var_os("PACS_TEST_REQUIRE_PEERS").is_none(),
            "mllp_send is missing (pip install hl7 into the test venv)"
        );
        eprintln!("skipping: mllp_send is missing");
    }
    bin
}

/// The first PID-3 identifier of a message.
fn pid3(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let pid = text
        .split(['\r', '\n'])
        .find(|l| l.starts_with("PID|"))
        .expect("a PID segment");
    let field = pid.split('|').nth(3).unwrap();
    let first = field.split('~').next().unwrap();
    first.split('^').next().unwrap().to_owned()
}

/// (MSH-3|MSH-4, MSH-10) of a message: the archive's key of it.
fn hl7_key(message: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(message);
    let msh: Vec<&str> = text
        .split(['\r', '\n'])
        .next()
        .unwrap()
        .split('|')
        .collect();
    (format!("{}|{}", msh[2], msh[3]), msh[9].to_owned())
}

#[test]
fn hl7_messages_acknowledged_before_a_kill_are_there_after_restart() {
    let Some(mllp_send) = mllp_send() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let messages = pacs_fixtures::hl7::oru_messages(11, 8);
    let file = work.path().join("messages.hl7");
    let framed: Vec<u8> = messages
        .iter()
        .flat_map(|m| {
            let mut f = vec![0x0B];
            f.extend_from_slice(m);
            f.extend_from_slice(&[0x1C, 0x0D]);
            f
        })
        .collect();
    std::fs::write(&file, &framed).unwrap();
    let send = |port: u16| {
        let out = Command::new(&mllp_send)
            .args(["-p", &port.to_string(), "-f"])
            .arg(&file)
            .arg("127.0.0.1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut serve = start(&data);
    let acks = send(serve.mllp_port);
    assert_eq!(acks.matches("MSA|AA|").count(), messages.len(), "{acks}");
    // Killed right after the last AA: every acknowledged message is durable.
    signal(&serve.child, "KILL");
    wait(&mut serve.child);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let archive = pacs_archive::Archive::open(pacs_archive::ArchiveConfig::embedded(&data))
            .await
            .unwrap();
        for m in &messages {
            let (sender, control_id) = hl7_key(m);
            assert!(
                archive
                    .catalog()
                    .message_by_key(&sender, &control_id)
                    .await
                    .unwrap()
                    .is_some(),
                "{sender} {control_id} was acknowledged but is not in the archive"
            );
        }
    });
    // Sent again after a restart: acknowledged, not stored twice.
    let serve = start(&data);
    let acks = send(serve.mllp_port);
    assert_eq!(acks.matches("MSA|AA|").count(), messages.len(), "{acks}");
    // The results read back through the HTTP API, per patient and per test.
    let (ok, token) = pacs(
        &data,
        &["token", "issue", "--role", "clinician", "--name", "lab"],
    );
    assert!(ok, "{token}");
    let token = token.trim();
    let (status, _) = http_get(serve.http_port, "pacs_forged", "/api/patients/x/results");
    assert_eq!(status, 401);
    let mut numeric_results = 0;
    for m in &messages {
        let patient = pid3(m);
        let (status, body) = http_get(
            serve.http_port,
            token,
            &format!("/api/patients/{patient}/results"),
        );
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let results = json["results"].as_array().unwrap();
        assert!(!results.is_empty(), "no results for {patient}: {body}");
        numeric_results += results
            .iter()
            .filter(|r| r["observation"]["numeric_value"].is_number())
            .count();
        // Every result's history is readable, oldest first.
        let code = results[0]["observation"]["code"]["code"].as_str().unwrap();
        let (status, body) = http_get(
            serve.http_port,
            token,
            &format!("/api/patients/{patient}/results/{code}"),
        );
        assert_eq!(status, 200, "{body}");
        let history: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(!history["points"].as_array().unwrap().is_empty(), "{body}");
    }
    assert!(numeric_results > 0, "lab values come back as numbers");
    // Found by full text: over HTTP, and with `pacs search` while the
    // server holds the index (read-only) and after it stopped.
    let panels_with_hemoglobin = (0..messages.len())
        .filter(|&n| {
            matches!(
                pacs_fixtures::hl7::OruKind::of(n),
                pacs_fixtures::hl7::OruKind::CompleteBloodCount
                    | pacs_fixtures::hl7::OruKind::CorrectedResult
            )
        })
        .count();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(serve.http_port, token, "/api/search?q=hemoglobin&kind=lab");
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        if json["total"].as_u64() == Some(panels_with_hemoglobin as u64) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http_get(serve.http_port, token, "/api/search?from=tomorrow");
    assert_eq!(status, 400, "{body}");
    let (ok, out) = pacs(&data, &["search", "718-7", "--kind", "lab", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), panels_with_hemoglobin, "{out}");
    drop(serve);
    let (ok, out) = pacs(&data, &["search", "--kind", "report"]);
    assert!(ok, "{out}");
    let reports = (0..messages.len())
        .filter(|&n| {
            pacs_fixtures::hl7::OruKind::of(n) == pacs_fixtures::hl7::OruKind::RadiologyReport
        })
        .count();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("report ")).count(),
        reports,
        "{out}"
    );
    let (ok, _) = pacs(&data, &["search", "x", "--from", "2024-02-31"]);
    assert!(!ok, "an impossible date is refused");
    let (ok, out) = pacs(&data, &["verify"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("and {} messages", messages.len())),
        "{out}"
    );
    runtime.block_on(async {
        let archive = pacs_archive::Archive::open(pacs_archive::ArchiveConfig::embedded(&data))
            .await
            .unwrap();
        let rows = archive
            .catalog()
            .select_text_rows("SELECT CAST(COUNT(*) AS TEXT) FROM messages", &[], 1)
            .await
            .unwrap();
        assert_eq!(
            rows[0][0].as_deref(),
            Some(messages.len().to_string().as_str())
        );
    });
}

#[test]
fn reports_sent_with_storescu_read_back_with_their_text() {
    if !dcmtk() {
        return;
    }
    use pacs_fixtures::{Kind, SrTemplate, single, structured_report};
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let (ok, token) = pacs(
        &data,
        &["token", "issue", "--role", "clinician", "--name", "t"],
    );
    assert!(ok, "{token}");
    let token = token.trim().to_owned();
    let reports = [
        single(Kind::Sr, ts::EXPLICIT_VR_LE, 5),
        single(Kind::Pdf, ts::EXPLICIT_VR_LE, 5),
        structured_report(SrTemplate::Enhanced, ts::EXPLICIT_VR_LE, 5),
        structured_report(SrTemplate::Comprehensive, ts::EXPLICIT_VR_LE, 5),
    ];
    let paths: Vec<String> = reports
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let path = work.path().join(format!("report{i}.dcm"));
            std::fs::write(&path, &f.bytes).unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect();
    let serve = start(&data);
    let files: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (ok, out) = storescu(serve.port, &["-xe"], &files);
    assert!(ok, "storescu failed:\n{out}");

    let study = &reports[0].study_instance_uid;
    let (status, body) = http_get(
        serve.http_port,
        &token,
        &format!("/api/studies/{study}/reports"),
    );
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = json["reports"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{json:#}");
    let text_of = |f: &FixtureFile| {
        listed
            .iter()
            .find(|r| r["sop_instance_uid"] == f.sop_instance_uid.as_str())
            .unwrap_or_else(|| panic!("no report of {}: {json:#}", f.file_name))["report"]
            ["report_text"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(text_of(&reports[0]).contains("\nImpressions\n"));
    assert!(text_of(&reports[1]).contains("\nIMPRESSION\n"));
    assert!(text_of(&reports[2]).contains("Long Axis: "));
    assert!(text_of(&reports[3]).contains("Study Date: "));

    // The extracted text is searchable: the reports themselves, and their
    // study by its report text (QIDO-RS).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(serve.http_port, &token, "/api/search?kind=report");
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        if json["total"] == 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, body) = http_get(serve.http_port, &token, "/api/search?q=%22long%20axis%22");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hits = json["hits"].as_array().unwrap();
    assert!(
        hits.iter()
            .any(|h| h["report"]["sop_instance_uid"] == reports[2].sop_instance_uid.as_str()),
        "{body}"
    );
    let (status, body) = http_get(
        serve.http_port,
        &token,
        "/dicom-web/studies?reporttext=long%20axis",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(study.as_str()), "{body}");
}
