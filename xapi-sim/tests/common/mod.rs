//! Helpers for xapi-sim's integration tests: an in-process pool on its own loopback
//! addresses and a temporary state directory, and XAPI calls without HTTP.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use a3_shared::xapi_wire::{Response, Value};
use xapi_sim::{Sim, SimConfig};

/// A distinct base address per pool, so tests can run in parallel: 127.<pid-derived>.<n>.11.
pub fn unique_address() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(127, 100 + (pid % 100) as u8, (n % 250) as u8, 11)
}

/// A running in-process pool and its state directory.
pub struct Pool {
    pub sim: Sim,
    pub dir: tempfile::TempDir,
    pub session: String,
}

pub const PASSWORD: &str = "sim-test-pw";

pub fn config(dir: &std::path::Path, hosts: usize, vms: usize) -> SimConfig {
    SimConfig {
        state_dir: dir.to_owned(),
        hosts,
        vms,
        address: unique_address(),
        port: 0,
        password: Some(PASSWORD.into()),
        disk_size: 4 << 20,
        abd_agent: None,
        abd_backend: xapi_sim::AbdBackend::Process,
    }
}

impl Pool {
    /// Starts a pool of `hosts` hosts and `vms` demo VMs and logs in to the master.
    pub async fn start(hosts: usize, vms: usize) -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::start(config(dir.path(), hosts, vms)).await.unwrap();
        let mut pool = Pool {
            sim,
            dir,
            session: String::new(),
        };
        pool.session = pool.login().await;
        pool
    }

    /// Ref of host `i` (0 = the first address).
    pub fn host(&self, i: usize) -> String {
        self.sim.hosts[i].r.clone()
    }

    /// Runs a call as if received by host `i`.
    pub async fn call_on(&self, i: usize, method: &str, params: Vec<Value>) -> Response {
        xapi_sim::server::call(self.sim.shared(), &self.host(i), method, &params).await
    }

    /// Logs in through host 0.
    pub async fn login(&self) -> String {
        let r = self
            .call_on(
                0,
                "session.login_with_password",
                vec!["root".into(), PASSWORD.into()],
            )
            .await;
        r.into_result().unwrap().as_str().unwrap().to_owned()
    }

    /// A call on the master with the session prepended, which must succeed.
    pub async fn ok(&self, method: &str, mut params: Vec<Value>) -> Value {
        params.insert(0, self.session.clone().into());
        match self.call_on(0, method, params).await {
            Response::Success(v) => v,
            Response::Failure(d) => panic!("{method} failed: {d:?}"),
        }
    }

    /// A call on the master with the session prepended, which must fail.
    pub async fn fail(&self, method: &str, mut params: Vec<Value>) -> Vec<String> {
        params.insert(0, self.session.clone().into());
        match self.call_on(0, method, params).await {
            Response::Success(v) => panic!("{method} unexpectedly succeeded: {v:?}"),
            Response::Failure(d) => d,
        }
    }

    /// The refs of VMs that are neither templates, snapshots nor control domains, with
    /// their power state.
    pub async fn guests(&self) -> Vec<(String, String)> {
        let all = self.ok("VM.get_all_records", vec![]).await;
        let mut out: Vec<(String, String)> = all
            .as_struct()
            .unwrap()
            .iter()
            .filter(|(_, r)| {
                !r.get("is_a_template").unwrap().as_bool().unwrap()
                    && !r.get("is_a_snapshot").unwrap().as_bool().unwrap()
                    && !r.get("is_control_domain").unwrap().as_bool().unwrap()
            })
            .map(|(k, r)| (k.clone(), r.get_str("power_state").unwrap().to_owned()))
            .collect();
        out.sort();
        out
    }

    /// A guest in `state`.
    pub async fn guest_in(&self, state: &str) -> String {
        self.guests()
            .await
            .into_iter()
            .find(|(_, s)| s == state)
            .map(|(r, _)| r)
            .unwrap_or_else(|| panic!("no {state} guest"))
    }

    /// The VDI behind userdevice `dev` of `vm`.
    pub async fn disk_of(&self, vm: &str, dev: &str) -> String {
        let vbds = self.ok("VM.get_VBDs", vec![vm.into()]).await;
        for vbd in vbds.as_array().unwrap() {
            let rec = self.ok("VBD.get_record", vec![vbd.clone()]).await;
            if rec.get_str("userdevice") == Some(dev) {
                return rec.get_str("VDI").unwrap().to_owned();
            }
        }
        panic!("{vm} has no VBD {dev}");
    }

    /// Writes bytes into a VDI as its guest would.
    pub fn guest_write(&self, vdi: &str, offset: u64, data: &[u8]) {
        let shared = self.sim.shared();
        let mut st = shared.lock();
        let uuid = st.db.str_field("VDI", vdi, "uuid").unwrap();
        st.disks.write(&uuid, offset, data).unwrap();
        drop(st);
        shared.changed();
    }

    /// Reads bytes of a VDI.
    pub fn read(&self, vdi: &str, offset: u64, len: u64) -> Vec<u8> {
        let st = self.sim.shared().lock();
        let uuid = st.db.str_field("VDI", vdi, "uuid").unwrap();
        st.disks.read(&uuid, offset, len).unwrap()
    }
}

/// The refs in a set value.
pub fn refs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}
