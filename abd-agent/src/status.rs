//! What the agent is doing right now, for the SSH `status` command: when it started,
//! whether it holds a connection to its A3 and over what, and the jobs it runs.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static STARTED: OnceLock<Instant> = OnceLock::new();
static LINK: Mutex<Option<&'static str>> = Mutex::new(None);
static JOBS: Mutex<BTreeMap<u64, String>> = Mutex::new(BTreeMap::new());

/// Notes the agent's start; call once, early in `main`.
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

/// Seconds since [`mark_start`].
pub fn uptime_secs() -> f64 {
    STARTED.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Records the transport of the control stream to the A3 (`QUIC`, `TLS/TCP`), or `None`
/// when it is down.
pub fn set_link(transport: Option<&'static str>) {
    *LINK.lock().unwrap_or_else(|e| e.into_inner()) = transport;
}

/// The transport of the control stream to the A3, when it is up.
pub fn link() -> Option<&'static str> {
    *LINK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running jobs: id and what they do.
pub fn jobs() -> Vec<(u64, String)> {
    let jobs = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    jobs.iter().map(|(id, what)| (*id, what.clone())).collect()
}

/// A running job, listed until dropped (when the job's task ends or is aborted).
pub struct JobMark(u64);

impl JobMark {
    /// Lists job `id`, doing `what`.
    pub fn new(id: u64, what: String) -> JobMark {
        let mut jobs = JOBS.lock().unwrap_or_else(|e| e.into_inner());
        jobs.insert(id, what);
        JobMark(id)
    }
}

impl Drop for JobMark {
    fn drop(&mut self) {
        let mut jobs = JOBS.lock().unwrap_or_else(|e| e.into_inner());
        jobs.remove(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_listed_while_its_mark_lives() {
        let mark = JobMark::new(41, "backup of xvdb".into());
        assert!(jobs().contains(&(41, "backup of xvdb".into())));
        drop(mark);
        assert!(!jobs().iter().any(|(id, _)| *id == 41));
    }
}
