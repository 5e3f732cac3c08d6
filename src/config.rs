//! `pacs.toml`: one typed configuration, loaded from the file named by
//! `--config` (or `PACS_CONFIG`), every key overridable by a `PACS_...`
//! environment variable (`__` separates sections: `PACS_STORAGE__S3__BUCKET`).
//! With no file at all, the embedded default in `./pacs-data`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use pacs_archive::{ArchiveConfig, CatalogConfig, IngestConfig, StorageConfig};
use pacs_dicom_gateway::GatewayConfig;
use pacs_hl7_gateway::MllpConfig;
use pacs_viewer_api::HttpConfig;
use serde::{Deserialize, Serialize};

/// The whole configuration of a `pacs` process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacsConfig {
    /// Data directory: SQLite catalog, filesystem objects, search index.
    pub data_dir: PathBuf,
    /// `[storage]`: where blobs go.
    pub storage: StorageConfig,
    /// `[catalog]`: the SQL catalog.
    pub catalog: CatalogConfig,
    /// `[ingest]`: compression, parallelism, replacement policy.
    pub ingest: IngestConfig,
    /// `[dicom]`: the DIMSE gateway of `pacs serve` (AE title, port, limits,
    /// timeouts, allowed peers).
    pub dicom: GatewayConfig,
    /// `[http]`: the HTTP API of `pacs serve` (DICOMweb, health, metrics).
    pub http: HttpConfig,
    /// `[mllp]`: the HL7 v2 listener of `pacs serve` (lab results, reports).
    pub mllp: MllpConfig,
}

impl Default for PacsConfig {
    fn default() -> Self {
        let archive = ArchiveConfig::default();
        PacsConfig {
            data_dir: archive.data_dir,
            storage: archive.storage,
            catalog: archive.catalog,
            ingest: archive.ingest,
            dicom: GatewayConfig::default(),
            http: HttpConfig::default(),
            mllp: MllpConfig::default(),
        }
    }
}

impl PacsConfig {
    /// Defaults, then the TOML file (if any), then `PACS_*` variables, then
    /// the `--data-dir` flag.
    pub fn load(file: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(PacsConfig::default()));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("configuration file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only variables that name a configuration section are read, so other
        // PACS_* variables (PACS_LOG, PACS_CONFIG, test settings) are not
        // mistaken for unknown keys.
        let sections: Vec<String> = serde_json::to_value(PacsConfig::default())
            .ok()
            .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
            .unwrap_or_default();
        figment = figment.merge(
            Env::prefixed("PACS_")
                .filter(move |key| {
                    let key = key.as_str().to_ascii_lowercase();
                    sections
                        .iter()
                        .any(|s| key == *s || key.starts_with(&format!("{s}__")))
                })
                .split("__"),
        );
        let mut config: PacsConfig = figment.extract().with_context(|| match file {
            Some(f) => format!(
                "invalid configuration in {} or PACS_* variables",
                f.display()
            ),
            None => "invalid configuration in PACS_* variables".to_owned(),
        })?;
        if let Some(dir) = data_dir {
            config.data_dir = dir.to_path_buf();
        }
        Ok(config)
    }

    pub fn archive(&self) -> ArchiveConfig {
        ArchiveConfig {
            data_dir: self.data_dir.clone(),
            storage: self.storage.clone(),
            catalog: self.catalog.clone(),
            ingest: self.ingest.clone(),
        }
    }
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_the_defaults_it_documents() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pacs.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Every key is spelled correctly (deny_unknown_fields) ...
        let parsed: PacsConfig = toml::from_str(&text).unwrap();
        // ... and the example shows the real defaults, except the S3 section
        // it fills in as an illustration.
        let mut expected = PacsConfig::default();
        expected.storage.s3 = parsed.storage.s3.clone();
        assert_eq!(parsed, expected);
        assert_eq!(
            parsed.storage.s3.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
    }

    #[test]
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "pacs.toml",
                "[ingest]\nzstd_level = 5\n[storage]\nbackend = \"s3\"\n",
            )?;
            jail.set_env("PACS_INGEST__ZSTD_LEVEL", "7");
            jail.set_env("PACS_STORAGE__S3__BUCKET", "archive-b");
            jail.set_env("PACS_SOMETHING_ELSE", "ignored");
            let config =
                PacsConfig::load(Some(Path::new("pacs.toml")), Some(Path::new("/x"))).unwrap();
            assert_eq!(config.ingest.zstd_level, 7);
            assert_eq!(config.storage.s3.bucket, "archive-b");
            assert_eq!(config.storage.backend, pacs_archive::StorageBackend::S3);
            assert_eq!(config.data_dir, Path::new("/x"));
            Ok(())
        });
    }

    #[test]
    fn dicom_section_from_file_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "pacs.toml",
                "[dicom]\nae_title = \"ARCHIVE\"\n\
                 [[dicom.allowed_peers]]\nae_title = \"CT1\"\naddresses = [\"10.0.0.5\"]\n",
            )?;
            jail.set_env("PACS_DICOM__PORT", "4242");
            let config = PacsConfig::load(Some(Path::new("pacs.toml")), None).unwrap();
            assert_eq!(config.dicom.ae_title, "ARCHIVE");
            assert_eq!(config.dicom.port, 4242);
            assert_eq!(config.dicom.allowed_peers.len(), 1);
            assert_eq!(
                config.dicom.allowed_peers[0].addresses,
                ["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("pacs.toml", "[ingest]\nzstd_levle = 5\n")?;
            let err = PacsConfig::load(Some(Path::new("pacs.toml")), None).unwrap_err();
            assert!(format!("{err:#}").contains("zstd_levle"), "{err:#}");
            Ok(())
        });
    }
}
