//! Shared helpers of the archive's integration tests: archives on both
//! backends, a real S3-compatible server (s3s-fs) on 127.0.0.1, and
//! damaged variants of fixture files.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::OpenFileOptions;
use pacs_archive::store::{ObjectStore, S3Store};
use pacs_archive::{Archive, ArchiveConfig, S3Config, StorageBackend};

pub const ACCESS_KEY: &str = "pacs-test-access";
pub const SECRET_KEY: &str = "pacs-test-secret-key";
pub const BUCKET: &str = "pacs-test";

/// An s3s-fs server process on 127.0.0.1, killed on drop.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub root: tempfile::TempDir,
}

fn s3_server_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PACS_TEST_S3_SERVER") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var("HOME").ok()?;
    let candidate = Path::new(&home).join(".cargo/bin/s3s-fs");
    candidate.is_file().then_some(candidate)
}

/// Start the S3 server, or return None when it is not installed and the
/// run does not require peers (`scripts/test` requires them).
pub fn s3_server() -> Option<S3Server> {
    let Some(binary) = s3_server_binary() else {
        assert!(
            std::env::var_os("PACS_TEST_REQUIRE_PEERS").is_none(),
            "s3s-fs is not installed; scripts/test installs it"
        );
        eprintln!("s3s-fs not installed: skipping (run scripts/test)");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join(BUCKET)).unwrap();
    let port = free_port();
    let mut server = S3Server {
        child: None,
        port,
        root,
    };
    server.start(&binary);
    Some(server)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    fn start(&mut self, binary: &Path) {
        let child = Command::new(binary)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY)
            .arg("--secret-key")
            .arg(SECRET_KEY)
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            bucket: bucket.to_owned(),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            max_attempts: 2,
            connect_timeout_ms: 500,
            attempt_timeout_ms: 10_000,
            ..S3Config::default()
        }
    }

    /// Stop the server (SIGKILL), as if the store went away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Number of stored objects under the bucket (files, excluding the
    /// server's own metadata).
    pub fn object_count(&self) -> usize {
        walkdir(self.root.path().join(BUCKET).as_path())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("blobs/sha256"))
            .count()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walkdir(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

pub async fn fs_archive(data_dir: &Path) -> Archive {
    Archive::open(ArchiveConfig::embedded(data_dir))
        .await
        .expect("open filesystem archive")
}

pub fn s3_archive_config(data_dir: &Path, server: &S3Server) -> ArchiveConfig {
    let mut config = ArchiveConfig::embedded(data_dir);
    config.storage.backend = StorageBackend::S3;
    config.storage.s3 = server.config(BUCKET);
    config
}

pub async fn s3_store(server: &S3Server) -> Arc<dyn ObjectStore> {
    Arc::new(S3Store::connect(&server.config(BUCKET)).await.unwrap())
}

/// Number of blobs in a filesystem archive's object folder.
pub fn fs_blob_count(data_dir: &Path) -> usize {
    walkdir(&data_dir.join("objects/blobs")).len()
}

/// Re-encode `part10` with `edit` applied to its data set (same transfer
/// syntax), for building invalid variants of good files.
pub fn edited(part10: &[u8], edit: impl FnOnce(&mut dicom_object::InMemDicomObject)) -> Vec<u8> {
    let mut file = OpenFileOptions::new()
        .from_reader(&part10[128..])
        .expect("fixture parses");
    edit(&mut file);
    let mut out = Vec::new();
    // write_all writes the preamble, the DICM code and the meta group too.
    file.write_all(&mut out).expect("re-encode");
    out
}

pub fn without(tag: Tag) -> impl FnOnce(&mut dicom_object::InMemDicomObject) {
    move |obj| {
        obj.remove_element(tag);
    }
}

pub fn with_uid(tag: Tag, value: &'static str) -> impl FnOnce(&mut dicom_object::InMemDicomObject) {
    move |obj| {
        obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
    }
}
