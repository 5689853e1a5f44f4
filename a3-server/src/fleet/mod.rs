//! ABD lifecycle (DESIGN.md §1.4): one ABD VM per VM being backed up at once, cloned from
//! the pool's template onto `Alike_SR`, 128 MiB, a VIF on the IP list's network (else the
//! management network), its boot config in `xenstore_data`; persistent: idle ABDs stay
//! running and are reused, and are destroyed only on request or when the template they
//! came from is no longer the one the A3 carries.
//!
//! - [`bootcfg`]: the `vm-data/abd/*` keys and the A3's DNS servers.
//! - [`template`]: the ABD template in each pool's `Alike_SR`.
//! - [`ips`]: each pool's static IP list for its ABDs.
//!
//! An ABD's disks carry the tag of the run that provisioned it (`xapi::owner`), so that
//! the reconciler removes a disk its VM no longer holds.
//!
//! An ABD whose agent is not connected when claimed (it crashed, or its VM stopped) is
//! restarted with a fresh enrollment token; if it still does not connect it is destroyed
//! and a new one provisioned.

pub mod bootcfg;
mod error;
pub mod ips;
pub mod template;

use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::catalog::abd_fleet::AbdVmRow;
use crate::catalog::run_log::RunLog;
use crate::config::Config;
use crate::dataport::DataPort;
use crate::inventory::Inventory;
use crate::sr::SrService;
use crate::xapi::Session;
use crate::xapi::create::VifSpec;
use crate::xapi::ops::{self, ABD_KEY, HIDE_KEY, TEMPLATE_VERSION_KEY};
use crate::xapi::owner::{RUN_KEY, RunTag};

pub use error::FleetError;

/// Starts an ABD's VM: on `on_host` when given (`VM.start_on`), else where the pool
/// places it.
async fn start(s: &Session, vm: &str, on_host: Option<&str>) -> Result<(), FleetError> {
    match on_host {
        Some(host) => ops::vm_start_on(s, vm, host).await?,
        None => ops::vm_start(s, vm).await?,
    }
    Ok(())
}

/// The host an ABD must run on to attach the disks of the VM `vm_uuid`: the host of a
/// host-local (not shared) SR holding one of them, as only a VM on that host can attach
/// its VDIs (xapi refuses others: `VM_REQUIRES_SR`, or an internal `Sr_not_attached` on
/// `VBD.plug`). `None` when every disk is on shared storage.
pub async fn host_for_disks(s: &Session, vm_uuid: &str) -> Result<Option<String>, FleetError> {
    let vm = ops::record(s, "VM", &ops::by_uuid(s, "VM", vm_uuid).await?).await?;
    for vbd in ops::refs(&vm, "VBDs") {
        let b = ops::record(s, "VBD", &vbd).await?;
        let vdi = ops::text(&b, "VDI");
        if ops::text(&b, "type") != "Disk" || vdi.is_empty() || vdi == ops::NULL_REF {
            continue;
        }
        let sr_ref = ops::text(&ops::record(s, "VDI", vdi).await?, "SR").to_owned();
        let sr = ops::record(s, "SR", &sr_ref).await?;
        if ops::flag(&sr, "shared") {
            continue;
        }
        for pbd in ops::refs(&sr, "PBDs") {
            let p = ops::record(s, "PBD", &pbd).await?;
            if ops::flag(&p, "currently_attached") {
                return Ok(Some(ops::text(&p, "host").to_owned()));
            }
        }
    }
    Ok(None)
}

/// The memory of an ABD VM.
pub const ABD_MEMORY: i64 = 128 << 20;

/// The ABD fleet of every pool.
#[derive(Clone)]
pub struct Fleet {
    catalog: Catalog,
    inventory: Inventory,
    dataport: DataPort,
    sr: SrService,
    config: Arc<Config>,
}

/// An ABD held by a run.
#[derive(Debug, Clone)]
pub struct Held {
    /// Its row.
    pub row: AbdVmRow,
    /// Its VM's ref.
    pub vm_ref: String,
}

impl Fleet {
    /// The fleet over these components.
    pub fn new(
        catalog: Catalog,
        inventory: Inventory,
        dataport: DataPort,
        sr: SrService,
        config: Arc<Config>,
    ) -> Fleet {
        Fleet {
            catalog,
            inventory,
            dataport,
            sr,
            config,
        }
    }

    /// An ABD of the pool for `run`: an idle one of the current template whose agent is
    /// connected (restarted if needed), else a new one. With `on_host` (see
    /// [`host_for_disks`]) the ABD runs on that host: an idle ABD resident elsewhere stays
    /// idle for another job, and a new one is started there.
    pub async fn acquire(
        &self,
        s: &Session,
        pool_uuid: &str,
        run: i64,
        log: &RunLog,
        on_host: Option<&str>,
    ) -> Result<Held, FleetError> {
        // ABDs and their template live on Alike_SR; a halted ABD would not start without
        // it (`NO_HOSTS_AVAILABLE`).
        self.sr
            .ensure_attached(s, pool_uuid)
            .await
            .map_err(Box::new)?;
        let carried = template::carried(&self.config)?;
        let template_ref = template::ensure(s, &self.catalog, pool_uuid, &carried).await?;
        self.retire_outdated(s, pool_uuid, &carried.version, log)
            .await;
        let mut elsewhere = Vec::new();
        let mut found = None;
        while let Some(row) = self
            .catalog
            .abd_vm_claim_idle(pool_uuid, &carried.version, run)?
        {
            if let Some(host) = on_host
                && !self.may_run_on(s, &row, host).await
            {
                elsewhere.push(row);
                continue;
            }
            match self.revive(s, &row, on_host, log).await {
                Ok(vm_ref) => {
                    log.info(&format!("reusing ABD '{}'", row.id));
                    found = Some(Held { row, vm_ref });
                    break;
                }
                Err(e) => {
                    log.warn(&format!(
                        "ABD '{}' does not answer ({e:#}); replacing it",
                        row.id
                    ));
                    if let Err(e) = self.destroy_row(s, &row).await {
                        log.warn(&format!("destroying ABD '{}': {e:#}", row.id));
                    }
                }
            }
        }
        for row in elsewhere {
            self.release(&row.id)?;
        }
        if let Some(held) = found {
            return Ok(held);
        }
        self.provision(
            s,
            pool_uuid,
            &template_ref,
            &carried.version,
            run,
            log,
            on_host,
        )
        .await
    }

    /// Whether the ABD's VM runs on `host`, or is halted and can be started there.
    async fn may_run_on(&self, s: &Session, row: &AbdVmRow, host: &str) -> bool {
        let Some(uuid) = &row.vm_uuid else {
            return false;
        };
        let rec = async { ops::record(s, "VM", &ops::by_uuid(s, "VM", uuid).await?).await };
        match rec.await {
            Ok(rec) => {
                ops::text(&rec, "resident_on") == host || ops::text(&rec, "power_state") == "Halted"
            }
            Err(_) => true, // revive finds out and replaces it
        }
    }

    /// Gives an ABD back: idle, running, ready for the next job.
    pub fn release(&self, id: &str) -> Result<(), FleetError> {
        self.catalog.abd_vm_set_state(id, "idle", None)?;
        Ok(())
    }

    /// Destroys an ABD on request: its VM and disks, its credential, its address.
    pub async fn destroy(&self, id: &str) -> Result<AbdVmRow, FleetError> {
        let row = self
            .catalog
            .abd_vm_get(id)?
            .ok_or_else(|| FleetError::UnknownAbd(id.to_owned()))?;
        if row.state == "busy" {
            return Err(FleetError::Busy {
                id: id.to_owned(),
                run: row.busy_run.unwrap_or_default(),
            });
        }
        let (s, _) = self.inventory.connect(&row.pool_uuid).await?;
        let result = self.destroy_row(&s, &row).await;
        s.logout().await;
        result.map(|()| row)
    }

    /// Makes sure a claimed ABD's agent is connected: restarts its VM with a fresh token
    /// when it is not. Returns the VM's ref.
    async fn revive(
        &self,
        s: &Session,
        row: &AbdVmRow,
        on_host: Option<&str>,
        log: &RunLog,
    ) -> Result<String, FleetError> {
        let vm_uuid = row.vm_uuid.as_deref().ok_or_else(|| FleetError::NoVm {
            id: row.id.clone(),
            state: row.state.clone(),
        })?;
        let vm_ref = ops::by_uuid(s, "VM", vm_uuid).await?;
        if self.dataport.connected().contains_key(&row.id) {
            return Ok(vm_ref);
        }
        log.info(&format!(
            "ABD '{}' is not connected: restarting its VM with a new enrollment token",
            row.id
        ));
        let rec = ops::record(s, "VM", &vm_ref).await?;
        if ops::text(&rec, "power_state") != "Halted" {
            ops::vm_hard_shutdown(s, &vm_ref).await?;
        }
        // The whole boot config again: the A3 may have restarted on another port 2811
        // address or DNS list since; the ABD keeps its addressing.
        let key =
            |k: &str| ops::map_key(&rec, "xenstore_data", &format!("{}/{k}", bootcfg::XS_DIR));
        let addressing = match key("ip") {
            None | Some("dhcp") => bootcfg::Addressing::Dhcp,
            Some(cidr) => bootcfg::Addressing::Static {
                cidr: cidr.to_owned(),
                gateway: key("gw").map(str::to_owned),
            },
        };
        let boot = self.boot_config(&row.id, addressing)?;
        ops::vm_set_xenstore_data(s, &vm_ref, &boot.xenstore_data()).await?;
        start(s, &vm_ref, on_host).await?;
        self.wait_connected(&row.id).await?;
        ops::vm_remove_xenstore_key(s, &vm_ref, &bootcfg::token_key()).await?;
        Ok(vm_ref)
    }

    #[allow(clippy::too_many_arguments)]
    async fn provision(
        &self,
        s: &Session,
        pool_uuid: &str,
        template_ref: &str,
        version: &str,
        run: i64,
        log: &RunLog,
        on_host: Option<&str>,
    ) -> Result<Held, FleetError> {
        let id = format!("abd-{}", hex::encode(rand::random::<[u8; 4]>()));
        let ip = self.catalog.abd_ip_take(pool_uuid, &id)?;
        let (network_ref, network_uuid) = match &ip {
            Some(ip) => (
                ops::by_uuid(s, "network", &ip.network_uuid).await?,
                ip.network_uuid.clone(),
            ),
            None => {
                let (r, n) = ops::management_network(s).await?;
                (r, ops::text(&n, "uuid").to_owned())
            }
        };
        let addressing = match &ip {
            Some(ip) => bootcfg::Addressing::Static {
                cidr: format!("{}/{}", ip.address, ip.prefix),
                gateway: ip.gateway.clone(),
            },
            None => bootcfg::Addressing::Dhcp,
        };
        let row = AbdVmRow {
            id: id.clone(),
            pool_uuid: pool_uuid.to_owned(),
            vm_uuid: None,
            network_uuid,
            ip: match &addressing {
                bootcfg::Addressing::Dhcp => "dhcp".into(),
                bootcfg::Addressing::Static { cidr, .. } => cidr.clone(),
            },
            template_version: version.to_owned(),
            state: "provisioning".into(),
            busy_run: Some(run),
            created_at: crate::util::clock::unix_now(),
        };
        if let Err(e) = self.catalog.abd_vm_insert(&row) {
            self.catalog.abd_vm_remove(&id)?;
            return Err(e.into());
        }
        log.info(&format!(
            "provisioning ABD '{id}' ({}) from the template",
            row.ip
        ));
        match self
            .build(s, &row, template_ref, &network_ref, addressing, on_host)
            .await
        {
            Ok(vm_ref) => {
                self.catalog.abd_vm_set_state(&id, "busy", Some(run))?;
                let mut row = row;
                row.state = "busy".into();
                row.vm_uuid = self.catalog.abd_vm_get(&id)?.and_then(|r| r.vm_uuid);
                log.info(&format!("ABD '{id}' is up and connected"));
                Ok(Held { row, vm_ref })
            }
            Err(e) => {
                let row = self.catalog.abd_vm_get(&id)?.unwrap_or(row);
                if let Err(c) = self.destroy_row(s, &row).await {
                    log.warn(&format!("cleaning up ABD '{id}': {c:#}"));
                }
                Err(FleetError::Provisioning {
                    id,
                    source: Box::new(e),
                })
            }
        }
    }

    /// Clone, configure, start, wait for the agent.
    async fn build(
        &self,
        s: &Session,
        row: &AbdVmRow,
        template_ref: &str,
        network_ref: &str,
        addressing: bootcfg::Addressing,
        on_host: Option<&str>,
    ) -> Result<String, FleetError> {
        let id = &row.id;
        let vm = ops::vm_clone(s, template_ref, &format!("ABD {id}")).await?;
        let rec = ops::record(s, "VM", &vm).await?;
        self.catalog.abd_vm_set_vm(id, ops::text(&rec, "uuid"))?;
        ops::vm_set_is_a_template(s, &vm, false).await?;
        ops::tag(s, "VM", &vm, ABD_KEY, id).await?;
        ops::tag(s, "VM", &vm, HIDE_KEY, "true").await?;
        self.tag_disks(s, &rec, row).await?;
        // Only the template carries the version tag: template lookups must not find ABDs.
        let _ = ops::untag(s, "VM", &vm, TEMPLATE_VERSION_KEY).await;
        if ops::int(&rec, "memory_static_max") != ABD_MEMORY {
            ops::vm_set_memory(s, &vm, ABD_MEMORY).await?;
        }
        for vif in ops::refs(&rec, "VIFs") {
            ops::vif_destroy(s, &vif).await?;
        }
        VifSpec {
            vm: vm.clone(),
            network: network_ref.to_owned(),
            device: "0".into(),
            mtu: 1500,
        }
        .create(s)
        .await?;
        let boot = self.boot_config(id, addressing)?;
        ops::vm_set_xenstore_data(s, &vm, &boot.xenstore_data()).await?;
        start(s, &vm, on_host).await?;
        self.wait_connected(id).await?;
        // Enrolled: the token is used up, but XAPI would show it to any session.
        ops::vm_remove_xenstore_key(s, &vm, &bootcfg::token_key()).await?;
        Ok(vm)
    }

    /// Tags the ABD's own disks with the run that made it. While its VM exists they are
    /// in use; once they are not (the VM destroyed without them, a destroy cut short), the
    /// reconciler removes them as any unused disk a run of this A3 made.
    async fn tag_disks(
        &self,
        s: &Session,
        vm: &ops::Record,
        row: &AbdVmRow,
    ) -> Result<(), FleetError> {
        let Some(run) = row.busy_run else {
            return Ok(());
        };
        let tag = RunTag::new(&self.catalog.instance_id()?, run);
        for vbd in ops::refs(vm, "VBDs") {
            let b = ops::record(s, "VBD", &vbd).await?;
            let vdi = ops::text(&b, "VDI");
            if ops::text(&b, "type") == "Disk" && vdi != ops::NULL_REF {
                ops::tag(s, "VDI", vdi, RUN_KEY, &tag.value()).await?;
            }
        }
        Ok(())
    }

    fn boot_config(
        &self,
        id: &str,
        addressing: bootcfg::Addressing,
    ) -> Result<bootcfg::BootConfig, FleetError> {
        let a3 = self.dataport.addr();
        if a3.ip().is_unspecified() {
            return Err(FleetError::UnspecifiedDataAddress(a3));
        }
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let dns = bootcfg::dns_servers(&self.config.dns, &resolv)?;
        Ok(bootcfg::BootConfig {
            a3,
            name: a3.ip().to_string(),
            id: id.to_owned(),
            token: self.dataport.pki().begin_enrollment(id)?,
            ca: self.dataport.pki().ca_pin(),
            addressing,
            dns,
            sshkey: self.a3_key()?.public_line(),
        })
    }

    /// The A3's SSH key, which every ABD's boot config names.
    pub fn a3_key(&self) -> Result<crate::ssh::A3Key, FleetError> {
        Ok(crate::ssh::A3Key::load_or_create(&self.config.state_dir)?)
    }

    /// Where and how to reach an ABD over SSH: the address its agent reported
    /// (`vm-data/abd/assigned-ip`), else its static address, else the one it connects to
    /// port 2811 from; and the host key it published (`vm-data/abd/ssh-hostkey`), to pin.
    pub async fn ssh_target(&self, id: &str) -> Result<crate::ssh::Target, FleetError> {
        let row = self
            .catalog
            .abd_vm_get(id)?
            .ok_or_else(|| FleetError::UnknownAbd(id.to_owned()))?;
        let vm_uuid = row.vm_uuid.as_deref().ok_or_else(|| FleetError::NoVm {
            id: id.to_owned(),
            state: row.state.clone(),
        })?;
        let (s, _) = self.inventory.connect(&row.pool_uuid).await?;
        let rec = async {
            let vm = ops::by_uuid(&s, "VM", vm_uuid).await?;
            ops::record(&s, "VM", &vm).await
        }
        .await;
        s.logout().await;
        let rec = rec?;
        let key = |k: &str| ops::map_key(&rec, "xenstore_data", k).map(str::to_owned);
        let reported = key(&format!("{}/assigned-ip", bootcfg::XS_DIR))
            .or_else(|| (row.ip != "dhcp").then(|| row.ip.clone()));
        let ip: std::net::IpAddr = match reported {
            Some(cidr) => {
                let addr = cidr.split('/').next().unwrap_or_default();
                addr.parse().map_err(|_| FleetError::BadAddress {
                    id: id.to_owned(),
                    cidr: cidr.clone(),
                })?
            }
            None => match self.dataport.connected().get(id) {
                Some(from) => from.remote.ip(),
                None => return Err(FleetError::NoAddress(id.to_owned())),
            },
        };
        Ok(crate::ssh::Target {
            abd: id.to_owned(),
            addr: std::net::SocketAddr::new(ip, crate::ssh::PORT),
            host_key: key(crate::ssh::XS_HOSTKEY),
        })
    }

    async fn wait_connected(&self, id: &str) -> Result<(), FleetError> {
        let limit = Duration::from_secs(self.config.abd_boot_timeout_secs);
        let deadline = tokio::time::Instant::now() + limit;
        while !self.dataport.connected().contains_key(id) {
            if tokio::time::Instant::now() >= deadline {
                return Err(FleetError::NotConnected {
                    id: id.to_owned(),
                    limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Destroys idle ABDs of older templates (they are replaced as needed).
    async fn retire_outdated(&self, s: &Session, pool_uuid: &str, version: &str, log: &RunLog) {
        let Ok(rows) = self.catalog.abd_vm_list(Some(pool_uuid)) else {
            return;
        };
        for row in rows
            .into_iter()
            .filter(|r| r.state == "idle" && r.template_version != version)
        {
            log.info(&format!(
                "ABD '{}' runs template {} (the A3 carries {version}): destroying it",
                row.id, row.template_version
            ));
            if let Err(e) = self.destroy_row(s, &row).await {
                log.warn(&format!("destroying ABD '{}': {e:#}", row.id));
            }
        }
    }

    /// Destroys the VM (and disks) of an ABD row, revokes its credential, forgets it.
    pub async fn destroy_row(&self, s: &Session, row: &AbdVmRow) -> Result<(), FleetError> {
        if let Some(uuid) = &row.vm_uuid {
            match ops::by_uuid(s, "VM", uuid).await {
                Ok(vm) => ops::destroy_vm(s, &vm, false).await?,
                Err(crate::xapi::XapiError::HandleInvalid { .. }) => {}
                Err(crate::xapi::XapiError::Api { code, .. }) if code == "UUID_INVALID" => {}
                Err(e) => return Err(e.into()),
            }
        }
        let _ = self.dataport.revoke(&row.id);
        self.catalog.abd_vm_remove(&row.id)?;
        tracing::info!(abd = %row.id, "ABD destroyed");
        Ok(())
    }
}
