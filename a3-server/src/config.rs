//! The A3's configuration: one optional TOML file, with defaults that work without it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the A3 keeps its state when neither the config nor `$A3_STATE_DIR` says.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/a3";

/// The A3's settings. Every field has a default, so an empty file is a valid config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Catalog, store, keys and certificates live here.
    pub state_dir: PathBuf,
    /// The HTTP API and web UI.
    pub http_listen: SocketAddr,
    /// Port 2811: the ABDs' data path (QUIC over UDP).
    pub data_listen: SocketAddr,
    /// Logs as JSON lines instead of human-readable text.
    pub log_json: bool,
    /// The address the pools' hosts use to reach the A3's NFS (`Alike_SR`); the NFS server
    /// and portmapper listen on it. Default: `data_listen`'s address, and when that is
    /// 0.0.0.0, the A3's address on the route to each pool's master.
    pub sr_address: Option<std::net::IpAddr>,
    /// The ABD template XVA (`cargo xtask image` builds it); default: `abd.xva` in the state
    /// dir, else next to the `a3-server` binary.
    pub abd_template: Option<PathBuf>,
    /// DNS servers given to ABDs (`ip[:port]`); default: the A3's own, from
    /// `/etc/resolv.conf`.
    pub dns: Vec<String>,
    /// How long a new ABD may take to boot and connect on port 2811, in seconds.
    pub abd_boot_timeout_secs: u64,
    /// How long a synchronous XAPI call may take, in seconds. Slow operations run as
    /// `Async.` tasks with bounds of their own, so this bounds record reads and quick
    /// changes: a pool slower than this is reported as not answering.
    pub xapi_call_timeout_secs: u64,
    /// How often the reconciler looks in every pool for what ended runs left behind
    /// (snapshots, VBDs into ABDs, half-restored VMs), in seconds.
    pub reconcile_interval_secs: u64,
    /// The block size of new backups, in bytes: a multiple of 512 within 512..=8 MiB. The
    /// default (256 KiB) was chosen by benchmark (`a3_shared::proto::DEFAULT_BLOCK_SIZE`);
    /// smaller blocks find changes and duplicates more finely but cost 33 bytes of manifest
    /// each. An incremental uses its base only when the base has the same block size.
    pub backup_block_size: u32,
    /// How long an ABD's enrollment token stays usable after the A3 issues it, in seconds.
    /// An ABD boots and enrolls within `abd_boot_timeout_secs`; the token is single-use
    /// and removed from the VM's `xenstore_data` once the ABD has enrolled.
    pub enrollment_token_ttl_secs: u64,
    /// How long an ABD's client certificate is valid, in days. The A3 renews it over the
    /// control stream when a third of that is left; an expired one is refused.
    pub abd_cert_days: u32,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config {}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid config.
    #[error("config {}: invalid: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: toml::de::Error,
    },
    /// A setting has a value the A3 cannot use.
    #[error("config {}: {key}: {message}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// The setting.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: std::env::var_os("A3_STATE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            http_listen: "127.0.0.1:8011".parse().expect("valid literal"),
            data_listen: "0.0.0.0:2811".parse().expect("valid literal"),
            log_json: false,
            sr_address: None,
            abd_template: None,
            dns: Vec::new(),
            abd_boot_timeout_secs: 120,
            xapi_call_timeout_secs: 60,
            reconcile_interval_secs: 300,
            backup_block_size: a3_shared::proto::DEFAULT_BLOCK_SIZE,
            enrollment_token_ttl_secs: 3600,
            abd_cert_days: 30,
        }
    }
}

impl Config {
    /// Reads `path`, or returns the defaults when no path is given.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        let geometry = a3_shared::proto::Geometry {
            size: 0,
            block_size: config.backup_block_size,
        };
        if !geometry.is_valid() {
            return Err(ConfigError::Value {
                path: path.to_owned(),
                key: "backup_block_size",
                message: format!(
                    "{} is not a multiple of {min} within {min}..={max} bytes",
                    config.backup_block_size,
                    min = a3_shared::proto::MIN_BLOCK_SIZE,
                    max = a3_shared::proto::MAX_BLOCK_SIZE,
                ),
            });
        }
        let positive = |key: &'static str, value: u64| {
            if value == 0 {
                Err(ConfigError::Value {
                    path: path.to_owned(),
                    key,
                    message: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        positive(
            "enrollment_token_ttl_secs",
            config.enrollment_token_ttl_secs,
        )?;
        positive("abd_cert_days", config.abd_cert_days.into())?;
        Ok(config)
    }

    /// The file where `serve` publishes the URL its API actually listens on.
    pub fn api_url_file(&self) -> PathBuf {
        self.state_dir.join("api.url")
    }

    /// The bearer token the CLI presents to the API (mode 0600).
    pub fn api_token_file(&self) -> PathBuf {
        self.state_dir.join("api.token")
    }

    /// The A3 SR's directory, served over NFS.
    pub fn sr_dir(&self) -> PathBuf {
        self.state_dir.join("sr")
    }

    /// The SQLite catalog.
    pub fn catalog_file(&self) -> PathBuf {
        self.state_dir.join("catalog.sqlite")
    }

    /// The backup store (`store::fs` has its layout).
    pub fn store_dir(&self) -> PathBuf {
        self.state_dir.join("store")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a3.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path))
    }

    #[test]
    fn block_size_must_be_a_multiple_of_a_sector_within_the_limits() {
        assert_eq!(load_text("").unwrap().backup_block_size, 256 << 10);
        assert_eq!(
            load_text("backup_block_size = 1024")
                .unwrap()
                .backup_block_size,
            1024
        );
        for key in ["enrollment_token_ttl_secs", "abd_cert_days"] {
            let e = load_text(&format!("{key} = 0")).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("at least 1"), "{e}");
        }
        for bad in [0, 100, 1000, 16 << 20] {
            let e = load_text(&format!("backup_block_size = {bad}")).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("backup_block_size") && text.contains("512..=8388608"),
                "{text}"
            );
        }
    }
}
