//! The agent's config file (TOML), as `a3-server abd enroll --out FILE` writes it. Under Xen
//! the same fields come from xenstore (the appliance issue); a plain process reads a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// What the agent needs to reach and trust its A3.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This ABD's id, as enrolled.
    pub id: String,
    /// The A3's port-2811 address.
    pub a3_address: SocketAddr,
    /// The name the A3's certificate carries (DNS name or IP).
    pub server_name: String,
    /// Hex SHA-256 of the A3's CA certificate: the only CA the agent trusts.
    pub ca_pin: String,
    /// The one-time enrollment token (used on first start only).
    #[serde(default)]
    pub token: Option<String>,
    /// Where the agent keeps its key and certificate; default `<config>.state/`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The local address to bind (the ABD's assigned address); default any.
    #[serde(default)]
    pub bind: Option<SocketAddr>,
    /// The A3's SSH public key (an OpenSSH line): the only key the agent's SSH server
    /// accepts. None: no SSH server.
    #[serde(default)]
    pub ssh_key: Option<String>,
    /// How to reach the A3 on 2811: `auto` (QUIC, and TLS/TCP when QUIC gets no answer),
    /// `quic` or `tcp`.
    #[serde(default)]
    pub transport: Transport,
}

/// The transport to the A3's port 2811 (DESIGN.md §4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC; the TLS/TCP fallback when QUIC gets no answer (UDP dropped on the way).
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// The TLS/TCP fallback only.
    Tcp,
}

impl AgentConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("agent config {}: cannot read", path.display()))?;
        let mut cfg: AgentConfig = toml::from_str(&text)
            .with_context(|| format!("agent config {}: invalid", path.display()))?;
        if cfg.ca_pin.len() != 64 || hex::decode(&cfg.ca_pin).is_err() {
            bail!(
                "agent config {}: ca_pin must be 64 hex digits (the SHA-256 of the A3's CA \
                 certificate); take it from `a3-server abd enroll`",
                path.display()
            );
        }
        if cfg.state_dir.is_none() {
            let mut dir = path.as_os_str().to_owned();
            dir.push(".state");
            cfg.state_dir = Some(PathBuf::from(dir));
        }
        Ok(cfg)
    }

    /// The state dir (always set after [`AgentConfig::load`]).
    pub fn state_dir(&self) -> &Path {
        self.state_dir.as_deref().expect("set by load")
    }
}
