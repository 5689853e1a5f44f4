//! Simulated-only test knobs: conditions of the world around a pool that a test sets
//! through the `/sim/` control API ([`crate::control`]) to make xapi's refusals happen on
//! demand. None of them is XAPI; none is saved (a restarted simulator starts without them).

use std::collections::HashSet;

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
    /// The next `PUT /import_raw_vdi` with more than this many bytes fails its write after
    /// them, with the error xapi reports for a failed write (`VDI_IO_ERROR`).
    pub import_write_failure_after: Option<u64>,
}
