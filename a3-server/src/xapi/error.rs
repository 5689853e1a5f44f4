//! Typed XAPI errors: transport failures, and the XAPI error codes the A3 acts on.

use std::time::Duration;

use a3_shared::xapi_wire::WireError;

use super::tls::Fingerprint;

/// Everything that can go wrong talking to one XAPI host. Each message names the host and,
/// where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum XapiError {
    /// Nothing answered: refused, unroutable, DNS failure, or the connect timed out.
    #[error(
        "host {host}: cannot connect: {detail}; check the address and that the host's XAPI \
         (HTTPS) is reachable from the A3"
    )]
    Unreachable {
        /// The host, as `address[:port]`.
        host: String,
        /// The underlying cause.
        detail: String,
    },
    /// The host took longer than the bound on this call.
    #[error(
        "host {host}: no answer to {method} within {after:?}; check the host and the network \
         (for a pool this slow, raise `xapi_call_timeout_secs` in the A3's config)"
    )]
    Timeout {
        /// The host.
        host: String,
        /// The call that timed out.
        method: String,
        /// The bound.
        after: Duration,
    },
    /// The host presented a different certificate from the one pinned at first contact.
    #[error(
        "host {host}: TLS certificate changed: pinned SHA-256 {pinned}, presented {presented}; \
         refusing to connect. If the host's certificate was replaced on purpose, re-trust it \
         with `a3-server host trust {host}`"
    )]
    CertificateChanged {
        /// The host.
        host: String,
        /// The fingerprint recorded at first contact.
        pinned: Fingerprint,
        /// The fingerprint the host presented now.
        presented: Fingerprint,
    },
    /// The TLS handshake failed for another reason than the pin.
    #[error("host {host}: TLS handshake failed: {detail}")]
    Tls {
        /// The host.
        host: String,
        /// rustls's reason.
        detail: String,
    },
    /// The HTTP layer answered with an error status (not XAPI's own failure envelope).
    #[error("host {host}: HTTP {status} to {method}; is this an XCP-ng/XenServer host?")]
    Http {
        /// The host.
        host: String,
        /// The call.
        method: String,
        /// The HTTP status.
        status: u16,
    },
    /// The answer is not a valid XAPI message.
    #[error("host {host}: unreadable answer to {method}: {source}")]
    Wire {
        /// The host.
        host: String,
        /// The call.
        method: String,
        /// The decoder's reason.
        source: WireError,
    },
    /// `SESSION_AUTHENTICATION_FAILED`.
    #[error(
        "host {host}: login failed: wrong user name or password for user '{user}' \
         (SESSION_AUTHENTICATION_FAILED); check the password (--password-file)"
    )]
    AuthenticationFailed {
        /// The host.
        host: String,
        /// The user name that was refused.
        user: String,
    },
    /// `HOST_IS_SLAVE`: the host is a pool supporter; talk to `master` instead.
    #[error("host {host} is a pool supporter; the pool master is {master} (HOST_IS_SLAVE)")]
    HostIsSlave {
        /// The supporter that answered.
        host: String,
        /// The master's address, as XAPI gives it (no port).
        master: String,
    },
    /// `SESSION_INVALID`: the session expired or the host restarted.
    #[error("host {host}: the XAPI session is no longer valid (SESSION_INVALID)")]
    SessionInvalid {
        /// The host.
        host: String,
    },
    /// `HANDLE_INVALID`: the object does not exist (any more).
    #[error("host {host}: {class} {reference} does not exist (HANDLE_INVALID)")]
    HandleInvalid {
        /// The host.
        host: String,
        /// The object's class.
        class: String,
        /// The ref that was not found.
        reference: String,
    },
    /// `VM_BAD_POWER_STATE`.
    #[error(
        "host {host}: VM {vm} is {actual}, but the call needs it {expected} (VM_BAD_POWER_STATE)"
    )]
    VmBadPowerState {
        /// The host.
        host: String,
        /// The VM's ref.
        vm: String,
        /// The power state the call needs.
        expected: String,
        /// The VM's power state.
        actual: String,
    },
    /// `EVENTS_LOST`: the event queue overflowed; the caller must resynchronise.
    #[error("host {host}: events were lost (EVENTS_LOST); a full resync is needed")]
    EventsLost {
        /// The host.
        host: String,
    },
    /// Any other XAPI error code.
    #[error("host {host}: {method} failed: {code} {params:?}")]
    Api {
        /// The host.
        host: String,
        /// The call.
        method: String,
        /// The XAPI error code.
        code: String,
        /// Its parameters.
        params: Vec<String>,
    },
    /// The answer is valid XAPI but not what the call returns (a missing field, a wrong type).
    #[error("host {host}: unexpected answer to {method}: {detail}")]
    Unexpected {
        /// The host.
        host: String,
        /// The call.
        method: String,
        /// What was wrong.
        detail: String,
    },
}

impl XapiError {
    /// The typed error for an XAPI `ErrorDescription` (`[code, params…]`).
    pub fn from_failure(host: &str, method: &str, description: Vec<String>) -> XapiError {
        let host = host.to_owned();
        let mut it = description.into_iter();
        let code = it.next().unwrap_or_default();
        let params: Vec<String> = it.collect();
        let param = |i: usize| params.get(i).cloned().unwrap_or_default();
        match code.as_str() {
            "SESSION_AUTHENTICATION_FAILED" => XapiError::AuthenticationFailed {
                host,
                user: param(0),
            },
            "HOST_IS_SLAVE" if !params.is_empty() => XapiError::HostIsSlave {
                host,
                master: param(0),
            },
            "SESSION_INVALID" => XapiError::SessionInvalid { host },
            "HANDLE_INVALID" => XapiError::HandleInvalid {
                host,
                class: param(0),
                reference: param(1),
            },
            "VM_BAD_POWER_STATE" => XapiError::VmBadPowerState {
                host,
                vm: param(0),
                expected: param(1),
                actual: param(2),
            },
            "EVENTS_LOST" => XapiError::EventsLost { host },
            _ => XapiError::Api {
                host,
                method: method.to_owned(),
                code,
                params,
            },
        }
    }

    /// True when the host could not be talked to at all, so another host of the pool may
    /// be the one to ask (failover).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            XapiError::Unreachable { .. } | XapiError::Timeout { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn error_codes_become_typed_errors() {
        let e = XapiError::from_failure("h", "m", desc(&["HOST_IS_SLAVE", "127.0.0.11"]));
        assert!(matches!(e, XapiError::HostIsSlave { ref master, .. } if master == "127.0.0.11"));
        let e = XapiError::from_failure("h", "m", desc(&["SESSION_INVALID", "OpaqueRef:x"]));
        assert!(matches!(e, XapiError::SessionInvalid { .. }));
        let e =
            XapiError::from_failure("h", "m", desc(&["HANDLE_INVALID", "VM", "OpaqueRef:gone"]));
        assert!(
            matches!(e, XapiError::HandleInvalid { ref class, ref reference, .. }
                if class == "VM" && reference == "OpaqueRef:gone")
        );
        let e = XapiError::from_failure(
            "h",
            "VM.start",
            desc(&["VM_BAD_POWER_STATE", "OpaqueRef:v", "halted", "running"]),
        );
        assert!(matches!(e, XapiError::VmBadPowerState { ref actual, .. } if actual == "running"));
        let e = XapiError::from_failure("h", "VDI.destroy", desc(&["VDI_IN_USE", "r", "destroy"]));
        assert!(matches!(e, XapiError::Api { ref code, ref params, .. }
            if code == "VDI_IN_USE" && params.len() == 2));
    }

    #[test]
    fn messages_name_the_host_and_the_fix() {
        let e = XapiError::from_failure(
            "127.0.0.12",
            "session.login_with_password",
            desc(&[
                "SESSION_AUTHENTICATION_FAILED",
                "root",
                "Authentication failure",
            ]),
        );
        let text = e.to_string();
        assert!(text.contains("127.0.0.12"), "{text}");
        assert!(
            text.contains("wrong user name or password for user 'root'"),
            "{text}"
        );
        assert!(text.contains("--password-file"), "{text}");
    }
}
