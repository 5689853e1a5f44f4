//! The ABD diag job (`a3-server abd diag --pool P`): on one ABD of the pool (an idle one
//! reused, else a new one provisioned), the agent's own checks plus the A3's checks of the
//! ABD, each pass, warn or fail with a remedy, stored with the run.
//!
//! The A3's checks:
//! - the ABD's connection on port 2811;
//! - SSH to the ABD on 22 with the A3's key, the host key pinned from what the ABD
//!   published in xenstore; through it the agent's own `diag --json`, whose lines join the
//!   table (source `abd`);
//! - a test disk: a small VDI of known content, created on `Alike_SR`, attached read-only to
//!   the ABD, read whole by the agent and hashed; the digest must match what was written.
//!   It proves hot-plug, device resolution and reads end to end without touching the store.
//!   The VDI and its VBD carry the run's tag, so recovery removes them after a crash;
//! - port 445 (SMB), which administrators of other backup products expect to open: this
//!   product does not use it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::{Context, JobResult};
use super::{Engine, StartError, Started, attach};
use crate::catalog::jobs::CheckRow;
use crate::catalog::run_log::RunLog;
use crate::dataport::Transport;
use crate::fleet::Held;
use crate::ssh;
use crate::util::clock::unix_now;
use crate::xapi::Session;
use crate::xapi::create::VdiSpec;
use crate::xapi::ops;
use crate::xapi::owner::RunTag;

/// The test disk's size: big enough for a throughput figure, small enough to be quick.
pub const TEST_DISK_BYTES: u64 = 16 << 20;
/// How long the agent may take to read the test disk.
const HASH_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the agent's self-checks may take over SSH (each network probe has 5 s, a disk
/// read 3 s).
const SSH_DIAG_TIMEOUT: Duration = Duration::from_secs(120);

/// A line of the agent's `diag --json`.
#[derive(Debug, Deserialize)]
struct AgentCheck {
    check: String,
    status: String,
    detail: String,
    #[serde(default)]
    remedy: String,
}

/// What to diagnose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiagSpec {
    /// The pool (uuid or name).
    pub pool: String,
}

/// A check's outcome, as stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Pass,
    /// Works partly, or is not needed for backups.
    Warn,
    /// Broken: backups will fail until fixed.
    Fail,
    /// A port people expect that this product does not use.
    NotUsed,
}

impl Status {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::NotUsed => "not used",
        }
    }
}

/// One of the A3's checks of `abd`.
fn a3_check(abd: &str, check: &str, status: Status, detail: String, remedy: &str) -> CheckRow {
    CheckRow {
        abd: abd.to_owned(),
        source: "a3".into(),
        check: check.to_owned(),
        status: status.as_str().to_owned(),
        detail,
        remedy: if status == Status::Pass {
            String::new()
        } else {
            remedy.to_owned()
        },
    }
}

impl Engine {
    /// Starts a diag run on one ABD of the pool; returns at once.
    pub fn start_diag(&self, spec: DiagSpec) -> Result<Started, StartError> {
        let pool = self
            .catalog()
            .list_pools()?
            .into_iter()
            .find(|p| p.uuid == spec.pool || p.name == spec.pool)
            .ok_or_else(|| {
                StartError::BadRequest(format!(
                    "no pool '{}'; see `a3-server pool list`",
                    spec.pool
                ))
            })?;
        let items = vec![(pool.uuid.clone(), pool.name.clone())];
        let spec_json = serde_json::to_string(&spec).unwrap_or_default();
        let (job, run) = self
            .catalog()
            .job_create("diag", &spec_json, &items, unix_now())?;
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            let log = RunLog::new(engine.catalog().clone(), run);
            log.info(&format!("diagnosing an ABD of pool '{}'", pool.name));
            let c = engine.catalog();
            let _ = c.run_item_set(run, &pool.uuid, "running", None, None, None);
            let reason = match engine.diag_pool(run, &pool.uuid, &log).await {
                Ok(checks) => {
                    let failed: Vec<String> = checks
                        .iter()
                        .filter(|c| c.status == Status::Fail.as_str())
                        .map(|c| format!("{} ({})", c.check, c.abd))
                        .collect();
                    if let Err(e) = c.run_checks_add(run, &checks) {
                        Some(format!("cannot store the results: {e}"))
                    } else if failed.is_empty() {
                        None
                    } else {
                        Some(format!(
                            "{} check(s) failed: {}; see `a3-server job show {job}`",
                            failed.len(),
                            failed.join(", ")
                        ))
                    }
                }
                Err(e) => Some(format!("{e:#}")),
            };
            let state = if reason.is_none() {
                "succeeded"
            } else {
                "failed"
            };
            match &reason {
                None => log.info("every check passed"),
                Some(r) => log.error(r),
            }
            let _ = c.run_item_set(run, &pool.uuid, state, None, None, reason.as_deref());
            engine.end_run(run, reason.as_deref()).await;
        });
        Ok(Started { job, run })
    }

    /// Holds an ABD of the pool for the run and checks it.
    async fn diag_pool(&self, run: i64, pool_uuid: &str, log: &RunLog) -> JobResult<Vec<CheckRow>> {
        let (s, _) = self.inventory().connect(pool_uuid).await?;
        let result = async {
            // The test disk is on Alike_SR, which every host sees: any host will do.
            let held = self.fleet().acquire(&s, pool_uuid, run, log, None).await?;
            let _ = self.catalog().run_item_set(
                run,
                pool_uuid,
                "running",
                Some(&held.row.id),
                None,
                None,
            );
            let checks = self.diag_abd(&s, run, pool_uuid, &held, log).await;
            if let Err(e) = self.fleet().release(&held.row.id) {
                log.warn(&format!("ABD '{}': {e}", held.row.id));
            }
            Ok::<_, super::error::JobError>(checks)
        }
        .await;
        s.logout().await;
        result
    }

    /// Every check of one ABD.
    async fn diag_abd(
        &self,
        s: &Session,
        run: i64,
        pool_uuid: &str,
        held: &Held,
        log: &RunLog,
    ) -> Vec<CheckRow> {
        let abd = held.row.id.as_str();
        let mut checks = Vec::new();
        checks.push(match self.dataport().connected().get(abd) {
            Some(c) if c.transport == Transport::Quic => a3_check(
                abd,
                "data port",
                Status::Pass,
                format!("connected to port 2811 over QUIC from {}", c.remote),
                "",
            ),
            Some(c) => a3_check(
                abd,
                "data port",
                Status::Warn,
                format!(
                    "connected to port 2811 over {} from {}",
                    c.transport, c.remote
                ),
                "the ABD uses the TCP fallback: open UDP 2811 from the ABD network to the A3 \
                 for QUIC, which is faster",
            ),
            None => a3_check(
                abd,
                "data port",
                Status::Fail,
                "not connected to port 2811".into(),
                "see the agent's quic line; UDP 2811 must pass from the ABD network to the A3",
            ),
        });
        log.info(&format!("ABD '{abd}': running its self-checks over SSH"));
        checks.extend(self.ssh_checks(abd).await);
        log.info(&format!("ABD '{abd}': reading a test disk"));
        checks.push(self.test_disk(s, run, pool_uuid, held).await);
        checks.push(a3_check(
            abd,
            "port 445 (SMB)",
            Status::NotUsed,
            "not used by this product: blocks travel on 2811 (QUIC), the SR on NFS (111, \
             2049), management on 22 and XAPI 443"
                .into(),
            "nothing to open",
        ));
        checks
    }

    /// SSH to the ABD, and through it the agent's own checks.
    async fn ssh_checks(&self, abd: &str) -> Vec<CheckRow> {
        const REMEDY: &str = "the A3 runs the ABD's self-checks over SSH (TCP 22): fix what the \
                              detail names, then run the diag again";
        let fail = |detail: String| vec![a3_check(abd, "ssh", Status::Fail, detail, REMEDY)];
        let target = match self.fleet().ssh_target(abd).await {
            Ok(t) => t,
            Err(e) => return fail(format!("{e:#}")),
        };
        let key = match self.fleet().a3_key() {
            Ok(k) => k,
            Err(e) => return fail(format!("the A3's SSH key: {e:#}")),
        };
        let out = match ssh::exec(&key, &target, "diag --json", SSH_DIAG_TIMEOUT).await {
            Ok(out) => out,
            Err(e) => return fail(e.to_string()),
        };
        let mut rows = vec![match &target.host_key {
            Some(pin) => a3_check(
                abd,
                "ssh",
                Status::Pass,
                format!(
                    "{}: the A3's key accepted, host key {pin} pinned",
                    target.addr
                ),
                "",
            ),
            None => a3_check(
                abd,
                "ssh",
                Status::Warn,
                format!(
                    "{}: the A3's key accepted; the ABD published no host key to pin",
                    target.addr
                ),
                "the agent writes vm-data/abd/ssh-hostkey at boot: an older agent? destroy the \
                 ABD (`a3-server abd destroy`) so a current one replaces it",
            ),
        }];
        match serde_json::from_str::<Vec<AgentCheck>>(&out.stdout) {
            Ok(lines) => rows.extend(lines.into_iter().map(|c| CheckRow {
                abd: abd.to_owned(),
                source: "abd".into(),
                check: c.check,
                status: c.status,
                detail: c.detail,
                remedy: c.remedy,
            })),
            Err(e) => rows.push(a3_check(
                abd,
                "self-checks",
                Status::Fail,
                format!(
                    "`diag --json` exited {} without a report ({e}): {}",
                    out.status,
                    out.stdout.trim()
                ),
                "see the ABD's log: `a3-server abd ssh ABD logs`",
            )),
        }
        rows
    }

    /// The test-disk check: write known bytes to a new VDI, have the ABD read and hash it.
    async fn test_disk(&self, s: &Session, run: i64, pool_uuid: &str, held: &Held) -> CheckRow {
        let abd = held.row.id.as_str();
        let content = test_pattern(run);
        let mut vbd = None;
        let mut vdi = None;
        let outcome = async {
            let sr = crate::sr::alike_sr(s, self.catalog(), pool_uuid)
                .await?
                .with_context(|| {
                    format!("pool {pool_uuid} has no Alike_SR yet (see `a3-server sr status`)")
                })?;
            let created = create_test_vdi(s, &sr, &self.tag(run)).await?;
            vdi = Some(created.clone());
            attach::import_raw(
                s,
                self.catalog(),
                &created,
                "the diag test disk",
                content.len() as u64,
                reqwest::Body::from(content.clone()),
            )
            .await?;
            let (plugged, device) =
                attach::for_reading(s, &held.vm_ref, abd, &created, &self.tag(run)).await?;
            vbd = Some(plugged);
            let started = Instant::now();
            let found =
                tokio::time::timeout(HASH_TIMEOUT, self.dataport().hash_device(abd, &device))
                    .await
                    .map_err(|_| {
                        super::error::JobError::Refused(format!(
                            "the ABD did not read {device} within {}s",
                            HASH_TIMEOUT.as_secs()
                        ))
                    })??;
            Ok::<_, super::error::JobError>((device, found, started.elapsed()))
        }
        .await;
        if let Some(vbd) = vbd
            && let Err(e) = ops::remove_vbd(s, &vbd).await
        {
            tracing::warn!(abd, "removing the test disk's VBD: {e}");
        }
        if let Some(vdi) = vdi
            && let Err(e) = ops::destroy_vdi(s, &vdi).await
        {
            tracing::warn!(abd, "destroying the test disk: {e}");
        }
        let expected = *blake3::hash(&content).as_bytes();
        match outcome {
            Ok((device, found, _)) if found.digest == expected && found.size == TEST_DISK_BYTES => {
                let secs = (found.micros as f64 / 1e6).max(1e-6);
                a3_check(
                    abd,
                    "test disk",
                    Status::Pass,
                    format!(
                        "attached as {device}, read {} MiB in {:.2}s ({:.0} MB/s), BLAKE3 matches",
                        found.size >> 20,
                        secs,
                        found.size as f64 / secs / 1e6
                    ),
                    "",
                )
            }
            Ok((device, found, _)) => a3_check(
                abd,
                "test disk",
                Status::Fail,
                format!(
                    "{device}: read {} bytes whose BLAKE3 is {}, expected {} bytes hashing to {}",
                    found.size,
                    hex::encode(found.digest),
                    TEST_DISK_BYTES,
                    hex::encode(expected)
                ),
                "the ABD read other bytes than the A3 wrote: check the SR and the ABD's disk \
                 driver (`a3-server abd ssh ABD logs`), then run the diag again",
            ),
            Err(e) => a3_check(
                abd,
                "test disk",
                Status::Fail,
                format!("{e:#}"),
                "the ABD must see disks hot-plugged from Alike_SR: check `a3-server sr status` \
                 and the ABD's log",
            ),
        }
    }
}

/// The test disk's content: distinct per run, so that a stale disk cannot pass.
fn test_pattern(run: i64) -> Vec<u8> {
    let mut out = vec![0u8; TEST_DISK_BYTES as usize];
    let mut xof = blake3::Hasher::new_derive_key("a3 abd diag test disk")
        .update(&run.to_le_bytes())
        .finalize_xof();
    xof.fill(&mut out);
    out
}

/// A new VDI on `sr` for the test disk, tagged with the run.
async fn create_test_vdi(s: &Session, sr: &str, tag: &RunTag) -> JobResult<String> {
    Ok(VdiSpec {
        name_label: format!("A3 diag test disk (run {})", tag.run),
        name_description: "created by the A3's ABD diag job; removed when it ends".into(),
        sr: sr.to_owned(),
        virtual_size: TEST_DISK_BYTES,
        other_config: tag.other_config(),
    }
    .create(s)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_patterns_differ_per_run_and_fill_the_disk() {
        let a = test_pattern(1);
        assert_eq!(a.len() as u64, TEST_DISK_BYTES);
        assert_eq!(a, test_pattern(1));
        assert_ne!(a, test_pattern(2));
        assert!(a.iter().any(|b| *b != 0));
    }
}
