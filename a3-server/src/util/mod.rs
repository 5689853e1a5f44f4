//! Small helpers every layer may use; they depend on nothing else in the crate.
//!
//! - [`clock`]: wall-clock time as the catalog stores it.

pub mod clock;
