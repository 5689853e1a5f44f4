//! Small helpers every layer may use; they depend on nothing else in the crate.
//!
//! - [`clock`]: wall-clock time as the catalog stores it, and as listings show it; the
//!   injectable clocks the store's leases and GC read, and a wall time that never steps.
//! - [`crashpoint`]: the kill sweep's crash points (`failpoints` builds only).
//! - [`install_crypto_provider`]: the one rustls provider every endpoint uses.

pub mod clock;
#[cfg(feature = "failpoints")]
pub mod crashpoint;

/// Installs rustls's `ring` provider as the process default (every TLS and QUIC endpoint
/// uses it). Safe to call more than once.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
