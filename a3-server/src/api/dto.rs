//! The API's wire types: every body the JSON API takes or returns, and so every type the
//! CLI (a client of the API) needs. Types the domain already defines in their wire shape
//! are re-exported here rather than copied, so the CLI never reaches into the domain.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use crate::catalog::abd_fleet::AbdVmRow;
pub use crate::catalog::inventory::{HostRow, PoolRow, VmRow};
pub use crate::catalog::ip_pool::AbdIp;
pub use crate::catalog::jobs::{CheckRow, JobRow, LogLine, RunItemRow, RunRow};
pub use crate::dataport::{Dispatched, JobState, JobStatus};
pub use crate::inventory::sync::SyncReport;
pub use crate::inventory::{AddedPool, RemovedPool, Trusted};
pub use crate::jobs::diag::DiagSpec;
pub use crate::jobs::restore::RestoreSpec;
pub use crate::jobs::verify::{VerifyState, VerifyStatus};
pub use crate::jobs::{BackupSpec, Progress, Started};
pub use crate::sr::PoolSr;
pub use crate::ssh::ExecOutput;
pub use crate::store::{
    GcReport, StoreStats, VerifyProgress, VerifyReport, VersionId, VersionInfo,
};

/// One ABD as `abd list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbdView {
    /// The id.
    pub id: String,
    /// `enrolling` (token issued, not used), `enrolled` or `revoked`.
    pub state: String,
    /// Whether its agent is connected now.
    pub connected: bool,
    /// Its agent's address when connected now.
    pub connected_from: Option<String>,
    /// `QUIC`, or `TLS/TCP` for the fallback, when connected now.
    #[serde(default)]
    pub transport: Option<String>,
    /// Unix seconds of the enrollment.
    pub enrolled_at: Option<i64>,
    /// Unix seconds of the revocation.
    pub revoked_at: Option<i64>,
    /// Unix seconds when its client certificate expires (renewed before that while it
    /// connects).
    #[serde(default)]
    pub cert_expires_at: Option<i64>,
}

/// What an agent needs to enroll; `abd enroll` writes it as the agent's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollAnswer {
    /// The ABD id.
    pub id: String,
    /// The one-time token.
    pub token: String,
    /// Unix seconds after which the token is refused.
    pub token_expires_at: i64,
    /// Hex SHA-256 of the A3's CA certificate.
    pub ca_pin: String,
    /// Port 2811's address as the A3 is bound (may be unspecified: 0.0.0.0).
    pub a3_address: String,
    /// A name the server certificate carries.
    pub server_name: String,
}

/// Revocation result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    /// The ABD id.
    pub id: String,
}

/// `POST /api/disks/backup`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupBody {
    /// The ABD to read the device.
    pub abd: String,
    /// The device or file on the ABD.
    pub path: String,
    /// The disk's name in the store.
    pub disk: String,
    /// XAPI's CBT bitmap (base64), for an incremental against the last committed version.
    pub cbt: Option<String>,
}

/// `POST /api/disks/restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreBody {
    /// The ABD to write the target.
    pub abd: String,
    /// The version to restore.
    pub version: String,
    /// Which disk of the version (when it has several).
    pub disk: Option<String>,
    /// Where the ABD writes it.
    pub path: String,
}

/// An ABD VM with its connection state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbdVmView {
    /// The row.
    #[serde(flatten)]
    pub row: AbdVmRow,
    /// Whether its agent is connected now, and from where.
    pub connected_from: Option<String>,
    /// `QUIC`, or `TLS/TCP` for the fallback, when connected now.
    #[serde(default)]
    pub transport: Option<String>,
}

/// A pool's IP list, as `abd ips set` sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpList {
    /// The pool (uuid or name).
    pub pool: String,
    /// The network (uuid or name) ABDs with these addresses go on.
    pub network: Option<String>,
    /// `addr/prefix` each.
    pub addresses: Vec<String>,
    /// The gateway.
    pub gateway: Option<String>,
}

/// A command to run on an ABD over SSH (`a3-server abd ssh`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshCommand {
    /// The command: `diag [--json]`, `status [--json]`, `logs` or `reboot`.
    pub command: String,
    /// The time limit in seconds.
    pub timeout_secs: u64,
}

/// `POST /api/hosts`: any host of the pool and its credentials.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddHost {
    /// `HOST`, `HOST:PORT` or `https://HOST[:PORT]/`.
    pub address: String,
    /// The XAPI user.
    pub username: String,
    /// The password.
    pub password: String,
}

/// A job with its latest run, as `job list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job.
    pub job: JobRow,
    /// Its latest run.
    pub run: Option<RunRow>,
}

/// A job in full, as `job show` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDetail {
    /// The job.
    pub job: JobRow,
    /// Its latest run.
    pub run: Option<RunRow>,
    /// The VMs of that run.
    pub items: Vec<RunItemRow>,
    /// Live progress of the VMs being worked on, by subject.
    pub progress: HashMap<String, Progress>,
    /// A diag run's results (empty for other jobs, and until the run ends).
    #[serde(default)]
    pub checks: Vec<CheckRow>,
}

/// A version of a VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionView {
    /// The id.
    pub id: i64,
    /// The VM's uuid.
    pub vm_uuid: String,
    /// The VM's name then.
    pub vm_name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Disks: name and size.
    pub disks: Vec<(String, u64)>,
}

/// `POST /api/store/verify`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyBody {
    /// Only this version; the whole store when absent.
    pub version: Option<VersionId>,
}
