//! The gateway driven by DCMTK's echoscu, storescu and dcmsend.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{CALLING, Server, dcmtk, dcmtk_tool, split_part10};
use pacs_dicom_gateway::AllowedPeer;
use pacs_fixtures::{DatasetSpec, FixtureFile, ts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_association_refusals() {
    if !dcmtk() {
        return;
    }
    let mut server = Server::start(|c| {
        c.allowed_peers.push(AllowedPeer {
            ae_title: "FARAWAY".into(),
            addresses: vec!["10.9.9.9".parse().unwrap()],
        })
    })
    .await;
    let port = server.port();
    let (ok, out) = dcmtk_tool(
        "echoscu",
        &["-aet", CALLING, "-aec", "PACS", "127.0.0.1", &port],
    )
    .await;
    assert!(ok, "{out}");

    let (ok, out) = dcmtk_tool(
        "echoscu",
        &["-aet", CALLING, "-aec", "NOTPACS", "127.0.0.1", &port],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("Called AE Title Not Recognized"), "{out}");

    let (ok, out) = dcmtk_tool(
        "echoscu",
        &["-aet", "STRANGER", "-aec", "PACS", "127.0.0.1", &port],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("Calling AE Title Not Recognized"), "{out}");

    // Allowed title, wrong address.
    let (ok, out) = dcmtk_tool(
        "echoscu",
        &["-aet", "FARAWAY", "-aec", "PACS", "127.0.0.1", &port],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("Calling AE Title Not Recognized"), "{out}");

    let counters = server.counters.snapshot();
    assert_eq!(counters.echoes, 1);
    assert_eq!(counters.associations_accepted, 1);
    assert_eq!(counters.associations_rejected, 3);
    server.shutdown().await;
}

/// Folder per transfer syntax, so each DCMTK run sends one syntax.
fn write_by_transfer_syntax(files: &[FixtureFile], root: &Path) -> BTreeMap<&'static str, String> {
    let mut dirs = BTreeMap::new();
    for f in files {
        let dir = root.join(f.transfer_syntax.replace('.', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(f.file_name.replace('/', "_")), &f.bytes).unwrap();
        dirs.insert(f.transfer_syntax, dir.display().to_string());
    }
    dirs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transfer_syntax_is_stored_as_received() {
    if !dcmtk() {
        return;
    }
    // A tiny configured max PDU must not lock out storescu, whose request
    // proposing all its SOP classes is ~10 KB (raised to the 64 KiB floor).
    let mut server = Server::start(|c| c.max_pdu_length = 4096).await;
    let port = server.port();
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let dirs = write_by_transfer_syntax(&files, dir.path());
    assert!(dirs.len() >= 6, "fixtures cover {:?}", dirs.keys());
    for (syntax, folder) in &dirs {
        // storescu for the uncompressed syntaxes, proposing exactly the file's
        // syntax so it sends the data set untouched; dcmsend for encapsulated
        // ones (storescu would have to decompress them).
        let storescu_flag = match *syntax {
            ts::EXPLICIT_VR_LE => Some("-xe"),
            ts::IMPLICIT_VR_LE => Some("-xi"),
            ts::EXPLICIT_VR_BE => Some("-xb"),
            ts::DEFLATED_EXPLICIT_VR_LE => Some("-xd"),
            _ => None,
        };
        let (ok, out) = match storescu_flag {
            Some(flag) => {
                dcmtk_tool(
                    "storescu",
                    &[
                        "-aet",
                        CALLING,
                        "-aec",
                        "PACS",
                        flag,
                        "+sd",
                        "127.0.0.1",
                        &port,
                        folder,
                    ],
                )
                .await
            }
            None => {
                dcmtk_tool(
                    "dcmsend",
                    &[
                        "-aet",
                        CALLING,
                        "-aec",
                        "PACS",
                        "--decompress-never",
                        "+sd",
                        "127.0.0.1",
                        &port,
                        folder,
                    ],
                )
                .await
            }
        };
        assert!(ok, "{syntax}: {out}");
    }
    assert_eq!(server.instance_count().await as usize, files.len());
    for f in &files {
        let stored = server.archive.retrieve(&f.sop_instance_uid).await.unwrap();
        let (stored_ts, stored_data) = split_part10(&stored);
        let (sent_ts, sent_data) = split_part10(&f.bytes);
        assert_eq!(stored_ts, sent_ts, "{}", f.file_name);
        assert_eq!(stored_ts, f.transfer_syntax);
        if stored_data == sent_data {
            continue;
        }
        // DCMTK re-encodes what it sends (sequences and items with explicit
        // lengths, deflate by its own zlib): then what was stored must be
        // exactly what DCMTK writes for this file.
        let reencoded = dir.path().join("reencoded.bin");
        let original = dir.path().join("original.dcm");
        std::fs::write(&original, &f.bytes).unwrap();
        let (ok, out) = dcmtk_tool(
            "dcmconv",
            &[
                "-F",
                "+e",
                original.to_str().unwrap(),
                reencoded.to_str().unwrap(),
            ],
        )
        .await;
        assert!(ok, "{out}");
        let expected = std::fs::read(&reencoded).unwrap();
        assert!(
            stored_data == expected.as_slice(),
            "{} ({}): stored data set is neither the file's nor DCMTK's encoding of it",
            f.file_name,
            f.transfer_syntax
        );
    }
    let counters = server.counters.snapshot();
    assert_eq!(counters.instances_stored as usize, files.len());
    assert_eq!(counters.store_failures, 0);

    // Sending everything again: identical duplicates are successes.
    let folder = &dirs[ts::EXPLICIT_VR_LE];
    let (ok, out) = dcmtk_tool(
        "storescu",
        &[
            "-aet",
            CALLING,
            "-aec",
            "PACS",
            "-xe",
            "+sd",
            "127.0.0.1",
            &port,
            folder,
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(server.counters.snapshot().instances_duplicate > 0);
    assert_eq!(server.instance_count().await as usize, files.len());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_sop_class_is_refused_and_nothing_stored() {
    if !dcmtk() {
        return;
    }
    let mut server = Server::start(|_| {}).await;
    let port = server.port();
    let mut file = pacs_fixtures::single(pacs_fixtures::Kind::Ct, ts::EXPLICIT_VR_LE, 7);
    // Same length, so every length field stays right.
    let ct = b"1.2.840.10008.5.1.4.1.1.2\0";
    let private = b"1.2.826.0.1.3680043.9.999\0";
    assert_eq!(ct.len(), private.len());
    let mut replaced = 0;
    let mut i = 0;
    while i + ct.len() <= file.bytes.len() {
        if &file.bytes[i..i + ct.len()] == ct {
            file.bytes[i..i + ct.len()].copy_from_slice(private);
            replaced += 1;
        }
        i += 1;
    }
    assert!(replaced >= 2, "SOP class found {replaced} times");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.dcm");
    std::fs::write(&path, &file.bytes).unwrap();
    let (ok, out) = dcmtk_tool(
        "dcmsend",
        &[
            "-aet",
            CALLING,
            "-aec",
            "PACS",
            "--decompress-never",
            "127.0.0.1",
            &port,
            path.to_str().unwrap(),
        ],
    )
    .await;
    // dcmsend reports the refusal but may still exit 0 (nothing to send).
    let _ = ok;
    assert!(
        out.to_lowercase()
            .contains("no acceptable presentation context"),
        "{out}"
    );
    assert_eq!(server.instance_count().await, 0);
    let (ok, out) = dcmtk_tool(
        "echoscu",
        &["-aet", CALLING, "-aec", "PACS", "127.0.0.1", &port],
    )
    .await;
    assert!(ok, "{out}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_associations_and_the_one_over_the_cap() {
    if !dcmtk() {
        return;
    }
    let mut server = Server::start(|c| c.max_associations = 8).await;
    let port = server.port();
    let files: Vec<FixtureFile> = DatasetSpec::small()
        .iter()
        .filter(|f| f.transfer_syntax == ts::EXPLICIT_VR_LE)
        .collect();
    // Eight disjoint shares: no instance is sent by two associations at once.
    assert!(files.len() >= 8, "{}", files.len());
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for k in 0..8 {
        let sub = dir.path().join(format!("run{k}"));
        std::fs::create_dir_all(&sub).unwrap();
        for (j, f) in files.iter().enumerate() {
            if j % 8 == k {
                std::fs::write(sub.join(format!("{j}.dcm")), &f.bytes).unwrap();
            }
        }
        let port = port.clone();
        let folder = sub.display().to_string();
        runs.push(tokio::spawn(async move {
            dcmtk_tool(
                "storescu",
                &[
                    "-aet",
                    CALLING,
                    "-aec",
                    "PACS",
                    "-xe",
                    "+sd",
                    "127.0.0.1",
                    &port,
                    &folder,
                ],
            )
            .await
        }));
    }
    for run in runs {
        let (ok, out) = run.await.unwrap();
        assert!(ok, "{out}");
    }
    assert_eq!(server.instance_count().await as usize, files.len());

    // Fill every slot with an idle association: the ninth is refused with
    // A-ASSOCIATE-RJ rejected-transient / local-limit-exceeded.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(
            common::TestScu::connect(server.addr, &[("1.2.840.10008.1.1", ts::IMPLICIT_VR_LE)])
                .await
                .unwrap(),
        );
    }
    server
        .wait_for("eight open associations", |c| {
            c.snapshot().associations_active == 8
        })
        .await;
    let (ok, out) = dcmtk_tool(
        "echoscu",
        &["-aet", CALLING, "-aec", "PACS", "127.0.0.1", &port],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("Local Limit Exceeded"), "{out}");
    assert!(out.contains("Transient"), "{out}");
    // Freeing one slot lets the next peer in.
    held.pop().unwrap().association.release().await.unwrap();
    server
        .wait_for("a free slot", |c| c.snapshot().associations_active == 7)
        .await;
    let (ok, out) = dcmtk_tool(
        "echoscu",
        &["-aet", CALLING, "-aec", "PACS", "127.0.0.1", &port],
    )
    .await;
    assert!(ok, "{out}");
    drop(held);
    server.shutdown().await;
}
