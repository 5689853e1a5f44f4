//! Pool jobs: whole-VM backups and restores, their runs persisted in the catalog
//! ([`crate::catalog::jobs`]), and recovery of interrupted runs at start.
//!
//! Who does what:
//! - this module: [`Engine`], which starts runs as tasks and keeps their live progress;
//! - [`backup`]: the backup of one VM through one ABD;
//! - [`restore`]: the restore of a version as a new VM or over the original, made safe
//!   by [`inplace`] (blocked, with a safety snapshot to write back from);
//! - [`recovery`]: interrupted runs marked failed after a crash;
//! - [`reconcile`]: what ended runs left in the pools, removed;
//! - [`metadata`]: the VM metadata a version carries;
//! - [`pools`]: adding a pool, with its `Alike_SR`;
//! - [`verify`]: the store's verify runs, as background tasks clients poll;
//!
//! A backup run of N VMs with concurrency C holds at most C ABDs at once
//! ([`crate::fleet`]); an ABD returns to idle when its VM is done, and the next VM reuses
//! it.

pub mod attach;
pub mod backup;
pub mod diag;
mod error;
mod inplace;
pub mod metadata;
pub mod pools;
pub mod reconcile;
pub mod recovery;
pub mod restore;
pub mod verify;

pub use error::{JobError, JobResult};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::catalog::inventory::VmRow;
use crate::catalog::run_log::RunLog;
use crate::config::Config;
use crate::dataport::DataPort;
use crate::fleet::Fleet;
use crate::inventory::Inventory;
use crate::store::Store;
use crate::util::clock::unix_now;
use crate::xapi::owner::RunTag;

/// Why a job cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request is wrong (unknown VM, bad concurrency…).
    #[error("{0}")]
    BadRequest(String),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
}

/// A backup request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupSpec {
    /// VM uuids or names.
    pub vms: Vec<String>,
    /// How many VMs at once (= ABDs).
    pub concurrency: usize,
}

/// What `backup run` / `restore` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    /// The job.
    pub job: i64,
    /// Its run.
    pub run: i64,
}

/// Live progress of one VM of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the current disk dealt with.
    pub done: u64,
    /// Bytes of the current disk.
    pub total: u64,
}

/// The job engine, shared by the API and the run tasks.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// This A3's instance id ([`crate::catalog::instance`]), in every run's tag.
    instance: String,
    catalog: Catalog,
    inventory: Inventory,
    dataport: DataPort,
    store: Store,
    fleet: Fleet,
    progress: Mutex<HashMap<i64, HashMap<String, Progress>>>,
    tasks: tokio_util::task::TaskTracker,
}

impl Engine {
    /// The engine over the server's components; `instance` is the catalog's instance id.
    pub fn new(
        instance: String,
        catalog: Catalog,
        inventory: Inventory,
        dataport: DataPort,
        store: Store,
        sr: crate::sr::SrService,
        config: Arc<Config>,
    ) -> Engine {
        let fleet = Fleet::new(
            catalog.clone(),
            inventory.clone(),
            dataport.clone(),
            sr,
            config,
        );
        Engine {
            inner: Arc::new(Inner {
                instance,
                catalog,
                inventory,
                dataport,
                store,
                fleet,
                progress: Mutex::default(),
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    /// The owner tag of what `run` creates in a pool.
    pub fn tag(&self, run: i64) -> RunTag {
        RunTag::new(&self.inner.instance, run)
    }

    /// Whether `tag` names a run of this A3 (its instance id).
    pub fn owns(&self, tag: &RunTag) -> bool {
        tag.instance == self.inner.instance
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The backup store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inner.inventory
    }

    /// Port 2811.
    pub fn dataport(&self) -> &DataPort {
        &self.inner.dataport
    }

    /// The ABD fleet.
    pub fn fleet(&self) -> &Fleet {
        &self.inner.fleet
    }

    /// Resolves a VM by uuid or exact name.
    pub fn find_vm(&self, id: &str) -> Result<VmRow, StartError> {
        let vms = self.inner.catalog.list_vms(None)?;
        if let Some(vm) = vms.iter().find(|v| v.uuid == id) {
            return Ok(vm.clone());
        }
        let named: Vec<&VmRow> = vms.iter().filter(|v| v.name == id).collect();
        match named.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StartError::BadRequest(format!(
                "no VM '{id}' in the managed pools; see `a3-server vm list`"
            ))),
            many => Err(StartError::BadRequest(format!(
                "{} VMs are named '{id}'; give its uuid ({})",
                many.len(),
                many.iter()
                    .map(|v| v.uuid.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Starts a backup run of `spec.vms`; returns at once.
    pub fn start_backup(&self, spec: BackupSpec) -> Result<Started, StartError> {
        if spec.vms.is_empty() {
            return Err(StartError::BadRequest(
                "name at least one VM to back up".into(),
            ));
        }
        if !(1..=64).contains(&spec.concurrency) {
            return Err(StartError::BadRequest(format!(
                "concurrency {} is out of range: use 1 to 64 (one ABD per VM at once)",
                spec.concurrency
            )));
        }
        let mut targets: Vec<backup::Target> = Vec::new();
        for id in &spec.vms {
            let vm = self.find_vm(id)?;
            if targets.iter().any(|t| t.uuid == vm.uuid) {
                continue;
            }
            targets.push(backup::Target {
                uuid: vm.uuid,
                name: vm.name,
                pool_uuid: vm.pool_uuid,
            });
        }
        let items: Vec<(String, String)> = targets
            .iter()
            .map(|t| (t.uuid.clone(), t.name.clone()))
            .collect();
        let spec_json = serde_json::to_string(&spec).unwrap_or_default();
        let (job, run) = self
            .inner
            .catalog
            .job_create("backup", &spec_json, &items, unix_now())?;
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            engine.run_backup(run, targets, spec.concurrency).await;
        });
        Ok(Started { job, run })
    }

    async fn run_backup(&self, run: i64, targets: Vec<backup::Target>, concurrency: usize) {
        let log = RunLog::new(self.inner.catalog.clone(), run);
        log.info(&format!(
            "backing up {} VM(s), {concurrency} at once",
            targets.len()
        ));
        let outcomes: Vec<(String, Result<i64, String>)> = futures::stream::iter(targets)
            .map(|t| {
                let log = log.clone();
                async move {
                    let r = self.backup_one(run, &t, &log).await;
                    (t.name, r)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let failed: Vec<String> = outcomes
            .iter()
            .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
            .collect();
        let reason = (!failed.is_empty()).then(|| {
            format!(
                "{} of {} VM(s) failed: {}",
                failed.len(),
                outcomes.len(),
                failed.join("; ")
            )
        });
        match &reason {
            None => log.info("run succeeded"),
            Some(r) => log.error(r),
        }
        self.end_run(run, reason.as_deref()).await;
        self.lock_progress().remove(&run);
    }

    /// Records a run's end, then snapshots the catalog into the store, so that job history
    /// survives the loss of the catalog file. A failed snapshot is logged; the next run's
    /// end takes another.
    async fn end_run(&self, run: i64, reason: Option<&str>) {
        if let Err(e) = self.inner.catalog.run_end(run, reason, unix_now()) {
            tracing::error!(run, "cannot record the run's end: {e}");
        }
        let store = self.inner.store.clone();
        match tokio::task::spawn_blocking(move || store.snapshot_catalog()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(run, "the catalog's snapshot into the store failed: {e}"),
            Err(e) => tracing::warn!(run, "the catalog's snapshot into the store failed: {e}"),
        }
    }

    async fn backup_one(&self, run: i64, t: &backup::Target, log: &RunLog) -> Result<i64, String> {
        let c = &self.inner.catalog;
        let _ = c.run_item_set(run, &t.uuid, "running", None, None, None);
        let result = async {
            let (s, _) = self.inner.inventory.connect(&t.pool_uuid).await?;
            let outcome = async {
                let on_host = crate::fleet::host_for_disks(&s, &t.uuid).await?;
                let held = self
                    .inner
                    .fleet
                    .acquire(&s, &t.pool_uuid, run, log, on_host.as_deref())
                    .await?;
                let _ = c.run_item_set(run, &t.uuid, "running", Some(&held.row.id), None, None);
                let r = backup::backup_vm(self, &s, run, t, &held, log).await;
                if let Err(e) = self.inner.fleet.release(&held.row.id) {
                    log.warn(&format!("ABD '{}': {e}", held.row.id));
                }
                r
            }
            .await;
            s.logout().await;
            outcome
        }
        .await
        .map_err(|e| format!("{e:#}"));
        match &result {
            Ok(v) => {
                let _ = c.run_item_set(run, &t.uuid, "succeeded", None, Some(*v), None);
            }
            Err(e) => {
                log.error(&format!("{}: backup failed: {e}", t.name));
                let _ = c.run_item_set(run, &t.uuid, "failed", None, None, Some(e));
            }
        }
        result
    }

    /// Starts a restore run; returns at once.
    pub fn start_restore(&self, spec: restore::RestoreSpec) -> Result<Started, StartError> {
        let v = self
            .inner
            .catalog
            .version_get(spec.version)?
            .ok_or_else(|| {
                StartError::BadRequest(format!(
                    "no version {}; see `a3-server version list VM`",
                    spec.version
                ))
            })?;
        let meta: metadata::VmMetadata = serde_json::from_str(&v.metadata).map_err(|_| {
            StartError::BadRequest(format!(
                "version {} is not a VM backup; restore a disk backup with `a3-server disk restore`",
                spec.version
            ))
        })?;
        let pool_uuid = match &spec.pool {
            None => meta.pool_uuid.clone(),
            Some(p) => self
                .inner
                .catalog
                .list_pools()?
                .into_iter()
                .find(|x| &x.uuid == p || &x.name == p)
                .map(|x| x.uuid)
                .ok_or_else(|| {
                    StartError::BadRequest(format!("no pool '{p}'; see `a3-server pool list`"))
                })?,
        };
        let items = vec![(spec.version.to_string(), meta.name_label.clone())];
        let spec_json = serde_json::to_string(&spec).unwrap_or_default();
        let (job, run) =
            self.inner
                .catalog
                .job_create("restore", &spec_json, &items, unix_now())?;
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            let log = RunLog::new(engine.inner.catalog.clone(), run);
            log.info(&format!(
                "restoring version {} of '{}' into pool {pool_uuid}",
                spec.version, meta.name_label
            ));
            let c = &engine.inner.catalog;
            let subject = spec.version.to_string();
            let _ = c.run_item_set(run, &subject, "running", None, None, None);
            let r = restore::restore(&engine, run, &spec, &pool_uuid, &log).await;
            let reason = match &r {
                Ok(vm) => {
                    log.info(&format!("restored as VM {vm}"));
                    let _ =
                        c.run_item_set(run, &subject, "succeeded", None, Some(spec.version), None);
                    None
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    log.error(&format!("restore failed: {e}"));
                    let _ = c.run_item_set(run, &subject, "failed", None, None, Some(&e));
                    Some(e)
                }
            };
            engine.end_run(run, reason.as_deref()).await;
        });
        Ok(Started { job, run })
    }

    /// Live progress of a run's VMs (empty once it ended).
    pub fn progress(&self, run: i64) -> HashMap<String, Progress> {
        self.lock_progress().get(&run).cloned().unwrap_or_default()
    }

    fn set_progress(&self, run: i64, subject: &str, done: u64, total: u64) {
        self.lock_progress()
            .entry(run)
            .or_default()
            .insert(subject.to_owned(), Progress { done, total });
    }

    fn lock_progress(&self) -> std::sync::MutexGuard<'_, HashMap<i64, HashMap<String, Progress>>> {
        self.inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the running jobs to end: in-process tests wait for a run this way. Jobs
    /// started afterwards still run, and a later call waits for them too (a closed tracker
    /// keeps tracking).
    pub async fn wait_idle(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
