//! `[http]`: the HTTP API of `pacs serve`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Configuration of the viewer API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen_address: IpAddr,
    /// TCP port (`--http-port` overrides it).
    pub port: u16,
    /// The base URL clients reach this API at, e.g.
    /// `https://pacs.example.org`: RetrieveURLs and BulkDataURIs are built
    /// from it, never from a request's Host header. Empty means
    /// `http://<listen_address>:<port>` (right only for local use).
    pub public_base_url: String,
    /// Origins allowed to call the API from a browser (CORS), e.g.
    /// `["https://viewer.example.org"]`; `["*"]` allows any origin. Empty
    /// disables CORS.
    pub cors_allowed_origins: Vec<String>,
    /// Largest STOW-RS request body, bytes. A body is read whole before
    /// anything in it is stored, so a broken request stores nothing.
    pub max_stow_bytes: u64,
    /// Largest FHIR request body (a DiagnosticReport or Bundle), bytes. A
    /// body is read whole and mapped before anything in it is stored.
    pub max_fhir_bytes: u64,
    /// Matches a QIDO-RS search returns when the request sets no `limit`.
    pub qido_default_limit: usize,
    /// Largest `limit` a QIDO-RS search may ask for.
    pub qido_max_limit: usize,
    /// Longest side of series thumbnails, pixels.
    pub thumbnail_size: u32,
    /// Rendered images and thumbnails kept in memory.
    pub render_cache_entries: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen_address: IpAddr::from([0, 0, 0, 0]),
            port: 8080,
            public_base_url: String::new(),
            cors_allowed_origins: Vec::new(),
            max_stow_bytes: 1 << 30,
            max_fhir_bytes: 16 << 20,
            qido_default_limit: 1000,
            qido_max_limit: 10_000,
            thumbnail_size: 128,
            render_cache_entries: 4096,
        }
    }
}

impl HttpConfig {
    /// The public base URL without a trailing slash.
    pub fn base_url(&self) -> String {
        if self.public_base_url.is_empty() {
            let host = if self.listen_address.is_unspecified() {
                "127.0.0.1".to_owned()
            } else if self.listen_address.is_ipv6() {
                format!("[{}]", self.listen_address)
            } else {
                self.listen_address.to_string()
            };
            format!("http://{host}:{}", self.port)
        } else {
            self.public_base_url.trim_end_matches('/').to_owned()
        }
    }
}
