//! The pool a fresh state directory starts with.
//!
//! Like a freshly installed XCP-ng pool with some guests: hosts with their control
//! domains and metrics, a local SR per host, the XCP-ng Tools ISO SR, a management and a second
//! network with a PIF per host, two templates, and demo VMs with two data disks, an
//! empty CD drive and a VIF each. Even-numbered demo VMs run, spread over the hosts.

use std::net::Ipv4Addr;

use crate::api;
use crate::demo::DemoSeed;
use crate::errors::ApiResult;
use crate::model::network::{self, PifAddress};
use crate::model::vm::{self, VmKind};
use crate::model::{host, new_ref, new_uuid};
use crate::state::State;

/// What to build.
pub struct Plan {
    /// Number of hosts.
    pub hosts: usize,
    /// Number of demo VMs.
    pub vms: usize,
    /// Address of host 1; host i gets the i-th next address.
    pub first_address: Ipv4Addr,
    /// Size of each demo VM's first disk (the second is half of it).
    pub disk_size: u64,
}

const GIB: i64 = 1 << 30;

/// Fills an empty state with the pool described by `plan`.
pub fn build(st: &mut State, plan: &Plan) -> ApiResult<()> {
    let pool = st.pool.clone();
    let mut hosts = Vec::new();
    for i in 0..plan.hosts {
        let addr = Ipv4Addr::from(u32::from(plan.first_address) + i as u32).to_string();
        let name = format!("xcp-ng-sim-{}", i + 1);
        let (h, dom0) = (new_ref(), new_ref());
        let metrics = new_ref();
        let now = crate::clock::unix_now();
        let m = host::host_metrics(&new_uuid(), 64 * GIB, now);
        st.db.insert("host_metrics", metrics.clone(), m);
        let mut rec = host::host(&new_uuid(), &name, &addr, &dom0);
        rec.insert("metrics".into(), metrics.into());
        st.db.insert("host", h.clone(), rec);
        let mut d = vm::vm(
            &new_uuid(),
            &format!("Control domain on host: {name}"),
            VmKind::ControlDomain,
            4 * GIB,
            4,
        );
        d.insert("power_state".into(), "Running".into());
        d.insert("resident_on".into(), h.clone().into());
        st.db.insert("VM", dom0, d);
        hosts.push((h, addr, name));
    }
    st.db.insert(
        "pool",
        pool.clone(),
        host::pool(&new_uuid(), "xapi-sim pool", &hosts[0].0),
    );

    let mut local_srs = Vec::new();
    for (h, _, name) in &hosts {
        let label = format!("Local storage on {name}");
        local_srs.push(api::create_sr(st, h, "ext", &label, "user", false)?);
    }
    st.db
        .set("pool", &pool, "default_SR", local_srs[0].clone())?;
    let iso = api::create_sr(st, &hosts[0].0, "iso", "XCP-ng Tools", "iso", true)?;
    st.db.set("SR", &iso, "is_tools_sr", true)?;
    let tools = api::create_vdi(st, "guest-tools.iso", &iso, 64 << 20, "user", None)?;
    st.db.update("VDI", &tools, |rec| {
        rec.insert("is_tools_iso".into(), true.into());
        rec.insert("read_only".into(), true.into());
    })?;

    let mgmt = new_ref();
    let second = new_ref();
    st.db.insert(
        "network",
        mgmt.clone(),
        network::network(
            &new_uuid(),
            "Pool-wide network associated with eth0",
            "xenbr0",
        ),
    );
    st.db.insert(
        "network",
        second.clone(),
        network::network(
            &new_uuid(),
            "Pool-wide network associated with eth1",
            "xenbr1",
        ),
    );
    for (h, addr, _) in &hosts {
        for (device, net, mgmt_pif) in [("eth0", &mgmt, true), ("eth1", &second, false)] {
            let pif = new_ref();
            let uuid = new_uuid();
            let a = if mgmt_pif {
                PifAddress {
                    ip: addr,
                    netmask: "255.0.0.0",
                    gateway: "127.0.0.1",
                }
            } else {
                PifAddress {
                    ip: "",
                    netmask: "",
                    gateway: "",
                }
            };
            let rec = network::pif(
                &uuid,
                device,
                h,
                net,
                &network::mac_from(&uuid),
                &a,
                mgmt_pif,
            );
            st.db.insert("PIF", pif.clone(), rec);
            st.db.add_to_set("host", h, "PIFs", &pif)?;
            st.db.add_to_set("network", net, "PIFs", &pif)?;
        }
    }

    for (name, disks) in [
        ("Debian Bookworm 12", Some(10 * GIB)),
        ("Other install media", None),
    ] {
        let t = new_ref();
        let mut rec = vm::vm(&new_uuid(), name, VmKind::Template, 2 * GIB, 2);
        if let Some(size) = disks {
            let spec = format!(
                r#"<provision><disk device="0" size="{size}" sr="" bootable="true" type="system"/></provision>"#
            );
            rec.insert(
                "other_config".into(),
                [("disks", spec)].into_iter().collect(),
            );
        }
        st.db.insert("VM", t, rec);
    }

    for j in 0..plan.vms {
        let v = new_ref();
        let name = format!("demo-vm-{j:03}");
        st.db.insert(
            "VM",
            v.clone(),
            vm::vm(&new_uuid(), &name, VmKind::Guest, GIB, 2),
        );
        let sr = &local_srs[j % local_srs.len()];
        for (disk, size) in [(0u32, plan.disk_size), (1, plan.disk_size / 2)] {
            let seed = DemoSeed { vm: j as u64, disk };
            let vdi = api::create_vdi(
                st,
                &format!("{name} disk {disk}"),
                sr,
                size as i64,
                "user",
                Some(seed),
            )?;
            let spec = api::VbdSpec {
                userdevice: disk.to_string(),
                ty: "Disk".into(),
                mode: "RW".into(),
                bootable: disk == 0,
                empty: false,
            };
            api::create_vbd(st, &v, &vdi, &spec)?;
        }
        let cd = api::VbdSpec {
            userdevice: "3".into(),
            ty: "CD".into(),
            mode: "RO".into(),
            bootable: false,
            empty: true,
        };
        api::create_vbd(st, &v, a3_shared::xapi_wire::NULL_REF, &cd)?;
        api::create_vif(st, &v, &mgmt, "0", "")?;
        if j % 2 == 0 {
            let host = hosts[j % hosts.len()].0.clone();
            api::start_on(st, &v, &host, false)?;
        }
    }
    Ok(())
}
