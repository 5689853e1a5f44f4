//! The simulator's whole mutable state, guarded by one lock in the server.

use std::collections::{BTreeSet, HashMap};

use crate::disks::DiskStore;
use crate::errors::{self, ApiResult};
use crate::model::{Db, Ref};

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who logged in.
    pub user: String,
    /// The host that served the login.
    pub host: Ref,
}

/// Objects, disk content, sessions and credentials.
#[derive(Debug)]
pub struct State {
    /// All XAPI objects and the event log.
    pub db: Db,
    /// VDI content and CBT.
    pub disks: DiskStore,
    /// Live sessions (not persisted: a restarted xapi forgets them too).
    pub sessions: HashMap<Ref, Session>,
    /// The one pool.
    pub pool: Ref,
    /// The user name logins must use.
    pub username: String,
    /// The password logins must use.
    pub password: String,
    /// The next domain id handed to a starting VM.
    pub next_domid: i64,
    /// The process backend for ABD VMs, when the simulator runs them (`--abd-agent`).
    pub abd: Option<crate::abd::Hook>,
    /// VBDs unplugged from a running ABD whose guest still holds the device; the backend
    /// removes each once the device is gone, and `VBD.unplug` replies only then (not
    /// persisted).
    pub detaching: BTreeSet<Ref>,
    /// Failures a test injected (not persisted).
    pub faults: Vec<crate::faults::Fault>,
    /// The simulated-only test knobs (not saved).
    pub knobs: crate::knobs::SimKnobs,
}

impl State {
    /// The pool master's ref.
    pub fn master(&self) -> ApiResult<Ref> {
        self.db.str_field("pool", &self.pool, "master")
    }

    /// A host's management address.
    pub fn host_address(&self, host: &str) -> ApiResult<String> {
        self.db.str_field("host", host, "address")
    }

    /// All hosts, in address order.
    pub fn hosts(&self) -> Vec<Ref> {
        let mut hosts: Vec<(String, Ref)> = self
            .db
            .table("host")
            .map(|(r, rec)| {
                let addr = rec.get("address").and_then(|v| v.as_str()).unwrap_or("");
                (addr.to_owned(), r.clone())
            })
            .collect();
        hosts.sort_by_key(|(addr, _)| addr.parse::<std::net::Ipv4Addr>().ok());
        hosts.into_iter().map(|(_, r)| r).collect()
    }

    /// Resolves a host given by ref, uuid or address.
    pub fn find_host(&self, id: &str) -> ApiResult<Ref> {
        self.db
            .table("host")
            .find(|(r, rec)| {
                r.as_str() == id
                    || rec.get("uuid").and_then(|v| v.as_str()) == Some(id)
                    || rec.get("address").and_then(|v| v.as_str()) == Some(id)
            })
            .map(|(r, _)| r.clone())
            .ok_or_else(|| errors::handle_invalid("host", id))
    }

    /// Resolves a VDI given by ref or uuid.
    pub fn find_vdi(&self, id: &str) -> ApiResult<Ref> {
        if self.db.exists("VDI", id) {
            return Ok(id.to_owned());
        }
        self.db.by_uuid("VDI", id)
    }
}
