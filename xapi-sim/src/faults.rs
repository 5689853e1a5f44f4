//! Injected failures, simulated-only: a test asks that a later call of a method fail with
//! a given XAPI error, as a real pool's calls fail when storage, a host or the network
//! misbehaves. The A3's clean-up after a failure at each step of a job is tested this way.
//! Set through the control API (`POST /sim/faults`); never persisted.

use crate::errors::ApiError;

/// One armed failure.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The method, without `Async.` (an injected fault hits both forms).
    pub method: String,
    /// Calls of the method that still succeed before the failing one.
    pub skip: u32,
    /// The error the failing call returns (in its task, for `Async.` calls).
    pub error: ApiError,
}

impl Fault {
    /// A fault from the control API's parameters: `code` and its comma-separated `params`
    /// (empty ones kept: xapi's `SR_BACKEND_FAILURE_*` carry `["", msg, ""]`).
    pub fn new(method: &str, skip: u32, code: &str, params: &str) -> Fault {
        Fault {
            method: method.strip_prefix("Async.").unwrap_or(method).to_owned(),
            skip,
            error: ApiError {
                // Codes are `&'static` everywhere else; a test arms a handful, so leaking
                // them is cheaper than making every error carry an owned code.
                code: Box::leak(code.to_owned().into_boxed_str()),
                params: if params.is_empty() {
                    Vec::new()
                } else {
                    params.split(',').map(str::to_owned).collect()
                },
            },
        }
    }
}

/// The error this call of `method` must fail with, if a fault is armed for it (the fault
/// is then spent); counts down the calls a fault lets through first.
pub fn take(faults: &mut Vec<Fault>, method: &str) -> Option<ApiError> {
    let i = faults.iter().position(|f| f.method == method)?;
    if faults[i].skip > 0 {
        faults[i].skip -= 1;
        return None;
    }
    Some(faults.remove(i).error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_lets_calls_through_then_fails_once() {
        let mut faults = vec![Fault::new(
            "Async.VBD.plug",
            1,
            "SR_BACKEND_FAILURE_46",
            ",The VDI is not available,",
        )];
        assert_eq!(take(&mut faults, "VBD.unplug"), None);
        assert_eq!(
            take(&mut faults, "VBD.plug"),
            None,
            "the first call is let through"
        );
        let e = take(&mut faults, "VBD.plug").expect("the second fails");
        assert_eq!(e.code, "SR_BACKEND_FAILURE_46");
        assert_eq!(e.params, ["", "The VDI is not available", ""]);
        assert_eq!(take(&mut faults, "VBD.plug"), None, "spent");
    }
}
