//! Reading a pool's inventory: a full sync through `get_all_records`, and events turned
//! into catalog changes.

use std::time::Instant;

use a3_shared::xapi_wire::Value;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::catalog::inventory::{Change, PoolObjects};
use crate::xapi::records::{
    HostRecord, NetworkRecord, PoolRecord, Record, SrRecord, VbdRecord, VdiRecord, VifRecord,
    VmRecord,
};
use crate::xapi::{Event, Operation, Session, XapiError};

use super::InventoryError;

/// The classes the inventory follows, as `event.from` names them.
pub const EVENT_CLASSES: &[&str] = &["pool", "host", "vm", "vbd", "vdi", "sr", "network", "vif"];

/// Reads every object the inventory keeps, with the calls running side by side.
pub async fn fetch(session: &Session) -> Result<(PoolRecord, PoolObjects), XapiError> {
    let ((_, pool), hosts, vms, vbds, vdis, srs, networks, vifs) = tokio::try_join!(
        crate::xapi::ops::the_pool(session),
        session.get_all_records::<HostRecord>(),
        session.get_all_records::<VmRecord>(),
        session.get_all_records::<VbdRecord>(),
        session.get_all_records::<VdiRecord>(),
        session.get_all_records::<SrRecord>(),
        session.get_all_records::<NetworkRecord>(),
        session.get_all_records::<VifRecord>(),
    )?;

    Ok((
        pool,
        PoolObjects {
            hosts,
            vms,
            vbds,
            vdis,
            srs,
            networks,
            vifs,
        },
    ))
}

/// What a full sync read and how long it took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncReport {
    /// The pool's uuid.
    pub pool_uuid: String,
    /// Objects read (hosts, VMs, VBDs, VDIs, SRs, networks, VIFs).
    pub objects: usize,
    /// VM records among them (templates, snapshots and control domains included).
    pub vms: usize,
    /// VDI records among them.
    pub vdis: usize,
    /// Time spent reading from XAPI, in seconds.
    pub fetch_seconds: f64,
    /// Time spent writing the catalog, in seconds.
    pub store_seconds: f64,
}

/// A full sync of a recorded pool into the catalog.
pub async fn full_sync(
    catalog: &Catalog,
    pool_uuid: &str,
    session: &Session,
) -> Result<SyncReport, InventoryError> {
    let started = Instant::now();
    let (pool, objects) = fetch(session).await?;
    let fetched = Instant::now();
    let mut report = SyncReport {
        pool_uuid: pool_uuid.to_owned(),
        objects: objects.hosts.len()
            + objects.vms.len()
            + objects.vbds.len()
            + objects.vdis.len()
            + objects.srs.len()
            + objects.networks.len()
            + objects.vifs.len(),
        vms: objects.vms.len(),
        vdis: objects.vdis.len(),
        fetch_seconds: (fetched - started).as_secs_f64(),
        store_seconds: 0.0,
    };
    let catalog = catalog.clone();
    let pool_uuid = pool_uuid.to_owned();
    // Thousands of rows: keep the SQLite work off the async threads.
    tokio::task::spawn_blocking(move || catalog.replace_inventory(&pool_uuid, &pool, &objects))
        .await
        .map_err(|e| InventoryError::Internal(format!("inventory writer: {e}")))??;
    report.store_seconds = fetched.elapsed().as_secs_f64();
    Ok(report)
}

/// The catalog changes for a batch of events. Records that do not parse are logged and
/// skipped: the next full sync gets them right or reports them.
pub fn changes(events: Vec<Event>) -> Vec<Change> {
    events.into_iter().filter_map(change).collect()
}

fn change(event: Event) -> Option<Change> {
    if event.operation == Operation::Del {
        return Some(Change::Deleted {
            class: event.class,
            reference: event.reference,
        });
    }
    let snapshot = event.snapshot.as_ref()?;
    let r = event.reference.clone();
    let parsed = match event.class.as_str() {
        "pool" => parse::<PoolRecord>(snapshot).map(Change::Pool),
        "host" => parse(snapshot).map(|h| Change::Host(r, h)),
        "vm" => parse(snapshot).map(|v| Change::Vm(r, v)),
        "vbd" => parse(snapshot).map(|v| Change::Vbd(r, v)),
        "vdi" => parse(snapshot).map(|v| Change::Vdi(r, v)),
        "sr" => parse(snapshot).map(|v| Change::Sr(r, v)),
        "network" => parse(snapshot).map(|v| Change::Network(r, v)),
        "vif" => parse(snapshot).map(|v| Change::Vif(r, v)),
        _ => return None,
    };
    parsed
        .map_err(|e| tracing::warn!(class = %event.class, reference = %event.reference, error = %e, "event skipped"))
        .ok()
}

fn parse<T: Record>(v: &Value) -> Result<T, crate::xapi::records::RecordError> {
    T::from_value(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_changes() {
        let net: Value = [
            ("uuid", "n1"),
            ("name_label", "Pool-wide network"),
            ("bridge", "xenbr0"),
        ]
        .into_iter()
        .collect();
        let events = vec![
            Event {
                class: "network".into(),
                operation: Operation::Add,
                reference: "OpaqueRef:n".into(),
                snapshot: Some(net),
            },
            Event {
                class: "vm".into(),
                operation: Operation::Del,
                reference: "OpaqueRef:v".into(),
                snapshot: None,
            },
            // Unparseable and unknown records are skipped.
            Event {
                class: "vm".into(),
                operation: Operation::Mod,
                reference: "OpaqueRef:w".into(),
                snapshot: Some(Value::empty_struct()),
            },
            Event {
                class: "task".into(),
                operation: Operation::Add,
                reference: "OpaqueRef:t".into(),
                snapshot: Some(Value::empty_struct()),
            },
        ];
        let out = changes(events);
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0], Change::Network(r, n) if r == "OpaqueRef:n" && n.bridge == "xenbr0")
        );
        assert!(matches!(&out[1], Change::Deleted { class, .. } if class == "vm"));
    }
}
