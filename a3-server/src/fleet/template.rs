//! The ABD template (DESIGN.md §1.3): the XVA the A3 carries is imported into each pool's
//! `Alike_SR` through `PUT /import`, hidden from XenCenter and tagged with its version; a
//! pool whose template is older than the one the A3 carries gets the new one, and its ABDs
//! of the old version are replaced as they fall idle ([`crate::fleet`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use a3_shared::xapi_wire::Value;
use a3_shared::xva::{XvaSink, read_xva};

use crate::catalog::Catalog;
use crate::catalog::abd_fleet::TemplateRow;
use crate::config::Config;
use crate::xapi::ops::{self, HIDE_KEY, TEMPLATE_VERSION_KEY};
use crate::xapi::{Session, XapiError};

/// How long an import may take.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(1800);

/// What can go wrong with the template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No XVA where the config says, or at the default places.
    #[error(
        "the ABD template is missing: looked for {0}; build it with `cargo xtask image` and set `abd_template` in the config (or copy abd.xva into the state dir)"
    )]
    Missing(String),
    /// The file is not a template XVA.
    #[error("ABD template {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The pool has no `Alike_SR` to put it on.
    #[error(
        "pool {0} has no SR named Alike_SR yet; the A3 creates it when the pool is added (see `a3-server sr status`)"
    )]
    NoSr(String),
    /// XAPI failed.
    #[error(transparent)]
    Xapi(#[from] XapiError),
    /// The pool's `Alike_SR` could not be looked up.
    #[error(transparent)]
    Sr(#[from] Box<crate::sr::SrError>),
    /// The upload failed.
    #[error("uploading the ABD template to {host}: {detail}")]
    Upload {
        /// The host.
        host: String,
        /// What failed.
        detail: String,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
}

/// The template the A3 carries: its file and version.
#[derive(Debug, Clone)]
pub struct Carried {
    /// The XVA.
    pub path: PathBuf,
    /// `abd_template_version` from its `ova.xml`.
    pub version: String,
}

/// Finds the XVA the A3 carries and reads its version.
pub fn carried(config: &Config) -> Result<Carried, TemplateError> {
    let candidates: Vec<PathBuf> = match &config.abd_template {
        Some(p) => vec![p.clone()],
        None => {
            let mut c = vec![config.state_dir.join("abd.xva")];
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf))
            {
                c.push(dir.join("abd.xva"));
            }
            c
        }
    };
    let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
        TemplateError::Missing(
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let version = read_version(path)?;
    Ok(Carried {
        path: path.clone(),
        version,
    })
}

/// Reads `abd_template_version` from an XVA's `ova.xml` (the first member), without
/// reading the disk.
pub fn read_version(path: &Path) -> Result<String, TemplateError> {
    /// Captures the version, then stops the read (an error ends `read_xva` early).
    struct VersionOnly(Option<String>);
    const STOP: &str = "metadata read";
    impl XvaSink for VersionOnly {
        fn metadata(&mut self, ova: &Value) -> Result<(), String> {
            let vm = ova
                .get("objects")
                .and_then(Value::as_array)
                .unwrap_or(&[])
                .iter()
                .find(|o| o.get_str("class") == Some("VM"))
                .and_then(|o| o.get("snapshot"));
            self.0 = vm
                .and_then(|vm| ops::map_key(vm, "other_config", TEMPLATE_VERSION_KEY))
                .map(str::to_owned);
            Err(STOP.into())
        }
        fn chunk(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }
    let invalid = |reason: String| TemplateError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| invalid(format!("cannot open: {e}")))?;
    let mut sink = VersionOnly(None);
    match read_xva(std::io::BufReader::new(file), &mut sink) {
        Err(a3_shared::xva::XvaError::Sink(s)) if s == STOP => {}
        Err(e) => return Err(invalid(e.to_string())),
        Ok(_) => return Err(invalid("its ova.xml was not read".into())),
    }
    sink.0.ok_or_else(|| {
        invalid(format!(
            "its VM has no other_config:{TEMPLATE_VERSION_KEY}; rebuild it with `cargo xtask image`"
        ))
    })
}

/// Makes sure the pool has the carried template: returns its ref, importing it when the
/// pool has none, or an older one (the older template is destroyed after the import).
pub async fn ensure(
    s: &Session,
    catalog: &Catalog,
    pool_uuid: &str,
    carried: &Carried,
) -> Result<String, TemplateError> {
    let sr = crate::sr::alike_sr(s, catalog, pool_uuid)
        .await
        .map_err(Box::new)?
        .ok_or_else(|| TemplateError::NoSr(pool_uuid.to_owned()))?;
    // This A3's templates of any version, by their tag: those on its own Alike_SR. A
    // second A3 managing the pool has its own, which this one never uses nor removes.
    let mut current = None;
    let mut older = Vec::new();
    for (r, vm) in ops::all_records(s, "VM").await? {
        if !ops::flag(&vm, "is_a_template") {
            continue;
        }
        let Some(version) = ops::map_key(&vm, "other_config", TEMPLATE_VERSION_KEY) else {
            continue;
        };
        if !on_sr(s, &vm, &sr).await? {
            continue;
        }
        if version == carried.version {
            current = Some((r, vm));
        } else {
            older.push(r);
        }
    }
    let (template, uuid) = match current {
        Some((r, vm)) => (r, ops::text(&vm, "uuid").to_owned()),
        None => {
            tracing::info!(pool = pool_uuid, version = %carried.version, "importing the ABD template");
            let r = import(s, &sr, &carried.path).await?;
            // Hidden and tagged, whatever the XVA said.
            ops::tag(s, "VM", &r, HIDE_KEY, "true").await?;
            ops::tag(s, "VM", &r, TEMPLATE_VERSION_KEY, &carried.version).await?;
            let uuid = ops::text(&ops::record(s, "VM", &r).await?, "uuid").to_owned();
            (r, uuid)
        }
    };
    catalog.template_set(&TemplateRow {
        pool_uuid: pool_uuid.to_owned(),
        vm_uuid: uuid,
        version: carried.version.clone(),
        imported_at: crate::util::clock::unix_now(),
    })?;
    for r in older {
        tracing::info!(pool = pool_uuid, template = %r, "removing an older ABD template");
        ops::destroy_vm(s, &r, false).await?;
    }
    Ok(template)
}

/// Whether a template's disks are on `sr`.
async fn on_sr(s: &Session, vm: &ops::Record, sr: &str) -> Result<bool, XapiError> {
    for vbd in ops::refs(vm, "VBDs") {
        let b = ops::record(s, "VBD", &vbd).await?;
        let vdi = ops::text(&b, "VDI");
        if ops::text(&b, "type") == "Disk" && vdi != ops::NULL_REF {
            return Ok(ops::text(&ops::record(s, "VDI", vdi).await?, "SR") == sr);
        }
    }
    Ok(false)
}

/// `PUT /import?session_id=&sr_id=&task_id=` of the XVA; returns the new VM's ref (the
/// task's result, as xapi reports it).
async fn import(s: &Session, sr: &str, path: &Path) -> Result<String, TemplateError> {
    let host = s.endpoint().to_string();
    let upload = |detail: String| TemplateError::Upload {
        host: host.clone(),
        detail,
    };
    // xapi takes the task to report through as `task_id`; a host without `task.create`
    // (the simulator) creates one itself and names it in the answer.
    let task = ops::task_create(s, "ABD template import").await?;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| upload(format!("{}: {e}", path.display())))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| upload(format!("{}: {e}", path.display())))?
        .len();
    let mut query = format!("/import?session_id={}&sr_id={sr}", s.session_ref().await);
    if let Some(task) = &task {
        query.push_str(&format!("&task_id={task}"));
    }
    let url = s.transport().url(&query);
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    // xapi refuses chunked transfer on /import: the length goes first.
    let resp = s
        .transport()
        .http()
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(body)
        .timeout(IMPORT_TIMEOUT)
        .send()
        .await
        .map_err(|e| upload(e.to_string()))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(upload(format!("HTTP {status}: {}", text.trim())));
    }
    let named = resp
        .headers()
        .get("task-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap_or_default();
    let task = task
        .or(named)
        .or_else(|| Some(body.trim().to_owned()).filter(|b| b.starts_with("OpaqueRef:")))
        .ok_or_else(|| upload(format!("the answer names no task: {:?}", body.trim())))?;
    let result = s.await_task("import", &task, IMPORT_TIMEOUT).await;
    ops::task_destroy(s, &task).await;
    let result = result?;
    let vm = match &result {
        Value::Array(a) => a.first().and_then(Value::as_str),
        v => v.as_str(),
    };
    vm.filter(|r| r.starts_with("OpaqueRef:"))
        .map(str::to_owned)
        .ok_or_else(|| upload(format!("the import task returned {result:?}, not a VM ref")))
}

/// How often the A3 checks that every pool has the carried template.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Keeps every pool's template current: at start, and within seconds of a pool being added
/// (once its `Alike_SR` exists), until `shutdown`.
pub async fn upkeep(
    catalog: Catalog,
    inventory: crate::inventory::Inventory,
    config: std::sync::Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut reported = std::collections::HashMap::<String, String>::new();
    loop {
        match carried(&config) {
            Err(e) => {
                if reported.insert(String::new(), e.to_string()).as_ref() != Some(&e.to_string()) {
                    tracing::warn!("{e}");
                }
            }
            Ok(carried) => {
                for pool in catalog.pool_uuids().unwrap_or_default() {
                    let current = catalog
                        .template_get(&pool)
                        .ok()
                        .flatten()
                        .is_some_and(|t| t.version == carried.version);
                    if current {
                        continue;
                    }
                    let outcome = async {
                        let (s, _) = inventory.connect(&pool).await.map_err(|e| e.to_string())?;
                        let r = ensure(&s, &catalog, &pool, &carried).await;
                        s.logout().await;
                        r.map_err(|e| e.to_string())
                    }
                    .await;
                    match outcome {
                        Ok(_) => {
                            reported.remove(&pool);
                            tracing::info!(pool, version = %carried.version, "ABD template in place");
                        }
                        // Say it once per cause (a new pool waits for its SR for a moment).
                        Err(e) => {
                            if reported.insert(pool.clone(), e.clone()).as_ref() != Some(&e) {
                                tracing::info!(pool, "ABD template not in place yet: {e}");
                            }
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(UPKEEP_EVERY) => {}
        }
    }
}
