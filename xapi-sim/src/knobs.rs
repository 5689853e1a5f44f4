//! Simulated-only test knobs: conditions of the world around a pool that a test sets
//! through the `/sim/` control API ([`crate::control`]) to make xapi's refusals happen on
//! demand. None of them is XAPI; none is saved (a restarted simulator starts without them).

use std::collections::HashSet;
use std::time::Duration;

use crate::model::Ref;

/// The knobs, kept in [`crate::state::State`].
#[derive(Debug, Default)]
pub struct SimKnobs {
    /// VMs whose guest has no PV tools: they start with no `VM_guest_metrics`, so an HVM
    /// one refuses hot-plug (`VM_MISSING_PV_DRIVERS`).
    pub no_guest_tools: HashSet<Ref>,
    /// VBDs whose device the guest holds open: `VBD.unplug` is rejected
    /// (`DEVICE_DETACH_REJECTED`), `VBD.unplug_force` still works.
    pub held_vbds: HashSet<Ref>,
    /// A `PUT /import_raw_vdi` with more than `after` bytes fails its write after them,
    /// with the error xapi reports for a failed write (`VDI_IO_ERROR`).
    pub import_write_failure: Option<ImportFailure>,
    /// A `PUT /import_raw_vdi` pauses part-way until the test lets it go on.
    pub import_hold: Option<ImportHold>,
    /// A slow pool: calls take this long, as a loaded host's xapi or a slow SR does.
    pub latency: Option<Latency>,
}

/// An armed write failure: it hits the first import with more than `after` bytes once
/// `skip` such imports went through.
#[derive(Debug, Clone, Copy)]
pub struct ImportFailure {
    /// Bytes written before the failure.
    pub after: u64,
    /// Imports of more than `after` bytes let through first.
    pub skip: u32,
}

/// A paused disk write, so that a test can act while a client's write is under way
/// (`POST /sim/import-hold?after=N`): the next import with more than `after` bytes writes
/// them, then waits until the test releases it (`DELETE /sim/import-hold`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportHold {
    /// Bytes written before the pause.
    pub after: u64,
    /// An import took the hold.
    pub taken: bool,
    /// The import has written `after` bytes and waits.
    pub holding: bool,
    /// The test let it go on.
    pub released: bool,
}

/// How slow calls are: a sync call answers after `delay`; an `Async.` call returns its
/// task at once and the task stays pending for `delay` before the operation runs.
#[derive(Debug, Clone)]
pub struct Latency {
    /// The added time.
    pub delay: Duration,
    /// Only this method (without `Async.`), or every method when `None`.
    pub method: Option<String>,
}

impl SimKnobs {
    /// The latency to add to a call of `method` (without `Async.`), if any.
    pub fn latency_of(&self, method: &str) -> Option<Duration> {
        let l = self.latency.as_ref()?;
        l.method
            .as_deref()
            .is_none_or(|m| m == method)
            .then_some(l.delay)
    }
}
