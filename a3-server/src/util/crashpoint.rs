//! The kill sweep's crash points. The durable-write boundaries of the store and the jobs
//! carry `fail::fail_point!(NAME)`; in a build with the `failpoints` feature (never one
//! that ships), `A3_CRASH_AT=NAME[:N]` makes the N-th pass (default the first) abort the
//! process there, as `kill -9` would at that instant: nothing after it runs, no destructor,
//! no flush. `cargo xtask faults` restarts the A3 after each and checks what it finds.

use std::sync::atomic::{AtomicU64, Ordering};

/// Arms the crash point `A3_CRASH_AT` names, if any.
pub fn arm_from_env() {
    let Ok(spec) = std::env::var("A3_CRASH_AT") else {
        return;
    };
    let (name, nth) = match spec.split_once(':') {
        Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
        None => (spec.clone(), 1),
    };
    let passes = AtomicU64::new(0);
    let point = name.clone();
    fail::cfg_callback(name, move || {
        if passes.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            eprintln!("A3_CRASH_AT: aborting at {point} (pass {nth})");
            std::process::abort();
        }
    })
    .expect("a callback is a valid fail point action");
}
