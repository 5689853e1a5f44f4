//! The handshake-signature checks every certificate verifier of ours shares.
//!
//! Our verifiers decide on certificates each in their own way (the agent: the A3's pinned
//! CA; the A3's XAPI client: a pinned host certificate; port 2811: the A3's CA and the
//! enrolled set), but rustls' verifier traits also require the three methods that check
//! the peer's handshake signature against its certificate, and those are the same for all
//! of them: webpki's checks with the algorithms of ring, the one provider every binary
//! here uses. [`ring_handshake_signatures!`](crate::ring_handshake_signatures) writes the
//! three methods, calling rustls with [`ring_algorithms`], into an `impl ServerCertVerifier`
//! or `impl ClientCertVerifier` block (the traits have no default for them).
//! rustls is sans-IO: no sockets here.

use std::sync::LazyLock;

use rustls::crypto::WebPkiSupportedAlgorithms;

/// The rustls whose items the macro names, so that callers need no path of their own.
#[doc(hidden)]
pub use rustls;

/// ring's signature verification algorithms. Kept once: each `default_provider()` call
/// builds a whole provider, allocations and all.
pub fn ring_algorithms() -> &'static WebPkiSupportedAlgorithms {
    static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> = LazyLock::new(|| {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    });
    &ALGORITHMS
}

/// Writes `verify_tls12_signature`, `verify_tls13_signature` and `supported_verify_schemes`
/// into an `impl rustls::client::danger::ServerCertVerifier` or
/// `impl rustls::server::danger::ClientCertVerifier` block, checking with ring's algorithms
/// (see [`crate::tls`]).
#[macro_export]
macro_rules! ring_handshake_signatures {
    () => {
        // The trait methods share their names with the rustls functions they call.
        $crate::ring_handshake_signatures!(@verify verify_tls12_signature);
        $crate::ring_handshake_signatures!(@verify verify_tls13_signature);

        fn supported_verify_schemes(
            &self,
        ) -> ::std::vec::Vec<$crate::tls::rustls::SignatureScheme> {
            $crate::tls::ring_algorithms().supported_schemes()
        }
    };
    (@verify $name:ident) => {
        fn $name(
            &self,
            message: &[u8],
            cert: &$crate::tls::rustls::pki_types::CertificateDer<'_>,
            dss: &$crate::tls::rustls::DigitallySignedStruct,
        ) -> ::std::result::Result<
            $crate::tls::rustls::client::danger::HandshakeSignatureValid,
            $crate::tls::rustls::Error,
        > {
            $crate::tls::rustls::crypto::$name(message, cert, dss, $crate::tls::ring_algorithms())
        }
    };
}
