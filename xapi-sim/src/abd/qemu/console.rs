//! What a qemu ABD reports on its serial console, carried into its VM's `xenstore_data` as
//! xenstored carries a guest's writes: with no xenstore to write to, the agent prints
//! `abd-vm-data: <key>=<value>` for each `vm-data/abd/<key>` it would write, and
//! `abd-xenstore-write: <path>=<value>` for its other writes (`feature/hotplug/vbd`),
//! which go where a xenstore write would ([`guest_agent::guest_write`]).
//!
//! `assigned-ip` is the address the guest got on qemu's user network (10.0.2.15), which
//! nothing on the host can reach; it is recorded as the ABD's host address instead
//! (127.0.5.N, whose port 22 qemu forwards to the guest), so the A3 reaches it back.

use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use a3_shared::xapi_wire::Value;
use tokio::task::JoinHandle;

use crate::guest_agent;
use crate::model::Ref;
use crate::sim::Shared;

/// The marker of a report line.
pub const MARK: &str = "abd-vm-data: ";
/// The key whose value is replaced by the host address.
const ASSIGNED_IP: &str = "assigned-ip";
/// How often the console file is read for new lines.
const POLL: Duration = Duration::from_millis(250);

/// The `vm-data/abd/` key and value a console line reports, if it is a report.
pub fn report(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.trim_end().strip_prefix(MARK)?.split_once('=')?;
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some((key, value))
}

/// The marker of a line carrying any other xenstore write of the guest (relative to its
/// domain's home), such as `feature/hotplug/vbd=1`.
pub const MARK_WRITE: &str = "abd-xenstore-write: ";

/// The path and value of a console line carrying a xenstore write outside `vm-data/`.
pub fn write_report(line: &str) -> Option<(&str, &str)> {
    let (path, value) = line.trim_end().strip_prefix(MARK_WRITE)?.split_once('=')?;
    (!path.starts_with("vm-data/")).then_some((path, value))
}

/// The value recorded for a reported key.
fn recorded(key: &str, value: &str, host: Ipv4Addr) -> String {
    if key == ASSIGNED_IP {
        format!("{host}/24")
    } else {
        value.to_owned()
    }
}

/// Follows the console file `path` of `vm`, recording its reports, until aborted.
pub fn watch(shared: Arc<Shared>, vm: Ref, path: PathBuf, host: Ipv4Addr) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut offset = 0;
        let mut partial = Vec::new();
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue; // qemu has not created it yet
            };
            let mut fresh = Vec::new();
            if f.seek(SeekFrom::Start(offset)).is_err() || f.read_to_end(&mut fresh).is_err() {
                continue;
            }
            offset += fresh.len() as u64;
            partial.extend_from_slice(&fresh);
            let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let lines: Vec<u8> = partial.drain(..=end).collect();
            for line in String::from_utf8_lossy(&lines).lines() {
                if let Some((path, value)) = write_report(line) {
                    let written = guest_agent::guest_write(&mut shared.lock(), &vm, path, value);
                    match written {
                        Ok(()) => shared.changed(),
                        Err(e) => tracing::warn!(%vm, path, "the qemu ABD's write: {e:?}"),
                    }
                }
                if let Some((key, value)) = report(line) {
                    record(&shared, &vm, key, &recorded(key, value, host));
                    if key == ASSIGNED_IP {
                        tracing::info!(%vm, "the qemu ABD got {value}; reachable at {host}");
                    }
                }
            }
        }
    })
}

fn record(shared: &Shared, vm: &str, key: &str, value: &str) {
    let path = format!("vm-data/abd/{key}");
    let changed = shared.lock().db.update("VM", vm, |rec| {
        if let Some(Value::Struct(m)) = rec.get_mut("xenstore_data") {
            m.insert(path, Value::from(value));
        }
    });
    if changed.is_ok() {
        shared.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_marked_lines_of_safe_keys() {
        assert_eq!(
            report("abd-vm-data: assigned-ip=10.0.2.15/24\r"),
            Some(("assigned-ip", "10.0.2.15/24"))
        );
        assert_eq!(
            report("abd-vm-data: ssh-hostkey=ssh-ed25519 AAAA abd"),
            Some(("ssh-hostkey", "ssh-ed25519 AAAA abd"))
        );
        assert_eq!(report("abd-status: uptime_s=3.0"), None);
        assert_eq!(report("abd-vm-data: ../x=1"), None);
        assert_eq!(report("abd-vm-data: novalue"), None);
        let host = Ipv4Addr::new(127, 0, 5, 3);
        assert_eq!(
            recorded("assigned-ip", "10.0.2.15/24", host),
            "127.0.5.3/24"
        );
        assert_eq!(recorded("ssh-hostkey", "k", host), "k");
        assert_eq!(
            write_report("abd-xenstore-write: feature/hotplug/vbd=1\r"),
            Some(("feature/hotplug/vbd", "1"))
        );
        assert_eq!(write_report("abd-xenstore-write: vm-data/abd/x=1"), None);
    }
}
