//! XAPI errors as the simulator raises them: a code and its parameters, exactly as xapi
//! puts them in `ErrorDescription`. Names and parameter lists follow DESIGN.md §3 and the
//! xen-api datamodel (`ocaml/idl/datamodel_errors.ml`).

use a3_shared::xapi_wire::Response;

/// One XAPI failure: `[code, params…]` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The XAPI error code, e.g. `HANDLE_INVALID`.
    pub code: &'static str,
    /// Its parameters, in xapi's order.
    pub params: Vec<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]", self.code, self.params.join(", "))
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Response {
        Response::failure(e.code, e.params)
    }
}

fn err<const N: usize>(code: &'static str, params: [&str; N]) -> ApiError {
    ApiError {
        code,
        params: params.iter().map(|p| (*p).to_owned()).collect(),
    }
}

/// Result of an API call.
pub type ApiResult<T> = Result<T, ApiError>;

/// `SESSION_AUTHENTICATION_FAILED [user, msg]`
pub fn session_authentication_failed(user: &str) -> ApiError {
    err(
        "SESSION_AUTHENTICATION_FAILED",
        [user, "Authentication failure"],
    )
}

/// `SESSION_INVALID [ref]`
pub fn session_invalid(session: &str) -> ApiError {
    err("SESSION_INVALID", [session])
}

/// `HANDLE_INVALID [class, ref]`
pub fn handle_invalid(class: &str, r: &str) -> ApiError {
    err("HANDLE_INVALID", [class, r])
}

/// `UUID_INVALID [class, uuid]`
pub fn uuid_invalid(class: &str, uuid: &str) -> ApiError {
    err("UUID_INVALID", [class, uuid])
}

/// `HOST_IS_SLAVE [master address]`
pub fn host_is_slave(master_address: &str) -> ApiError {
    err("HOST_IS_SLAVE", [master_address])
}

/// `MESSAGE_METHOD_UNKNOWN [method]`
pub fn message_method_unknown(method: &str) -> ApiError {
    err("MESSAGE_METHOD_UNKNOWN", [method])
}

/// `MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]`
pub fn message_parameter_count_mismatch(
    method: &str,
    expected: usize,
    received: usize,
) -> ApiError {
    err(
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        [method, &expected.to_string(), &received.to_string()],
    )
}

/// `VM_BAD_POWER_STATE [vm, expected, actual]`, with states in lower case as xapi writes
/// them.
pub fn vm_bad_power_state(vm: &str, expected: &str, actual: &str) -> ApiError {
    err(
        "VM_BAD_POWER_STATE",
        [vm, &expected.to_lowercase(), &actual.to_lowercase()],
    )
}

/// `VM_IS_TEMPLATE [vm, op]`: the operation is not one a template allows
/// (xapi_vm_lifecycle.ml `check_template`).
pub fn vm_is_template(vm: &str, op: &str) -> ApiError {
    err("VM_IS_TEMPLATE", [vm, op])
}

/// `VM_IS_SNAPSHOT [vm, op]`: the operation is not one a snapshot allows
/// (xapi_vm_lifecycle.ml `check_snapshot`).
pub fn vm_is_snapshot(vm: &str, op: &str) -> ApiError {
    err("VM_IS_SNAPSHOT", [vm, op])
}

/// `OPERATION_BLOCKED [ref, reason]`: the object's `blocked_operations` names the
/// operation; the reason is the map's value (xapi_vm_lifecycle.ml `check_operation_error`).
pub fn operation_blocked(r: &str, reason: &str) -> ApiError {
    err("OPERATION_BLOCKED", [r, reason])
}

/// `MEMORY_CONSTRAINT_VIOLATION_ORDER []`: memory limits out of order
/// (xapi_vm_memory_constraints.ml `assert_valid`).
pub fn memory_constraint_violation_order() -> ApiError {
    err("MEMORY_CONSTRAINT_VIOLATION_ORDER", [])
}

/// `VDI_IN_USE [vdi, op]`, as `VDI.destroy` and `VDI.data_destroy` raise it (xapi_vdi.ml).
pub fn vdi_in_use(vdi: &str, op: &str) -> ApiError {
    err("VDI_IN_USE", [vdi, op])
}

/// `VDI_IN_USE [vdi]`, as the sharing check of `VBD.plug` and `VM.start` raises it
/// (xapi_vbd_helpers.ml).
pub fn vdi_in_use_by_vbd(vdi: &str) -> ApiError {
    err("VDI_IN_USE", [vdi])
}

/// `VDI_READONLY [vdi]`: a read-write VBD of a read-only VDI (xapi_vbd.ml, xapi_vbd_helpers.ml).
pub fn vdi_readonly(vdi: &str) -> ApiError {
    err("VDI_READONLY", [vdi])
}

/// `DISK_VBD_MUST_BE_READWRITE_FOR_HVM [vbd]` (xapi_vbd.ml, CA-83260).
pub fn disk_vbd_must_be_readwrite_for_hvm(vbd: &str) -> ApiError {
    err("DISK_VBD_MUST_BE_READWRITE_FOR_HVM", [vbd])
}

/// `VM_MISSING_PV_DRIVERS [vm]` (xapi_pv_driver_version.ml).
pub fn vm_missing_pv_drivers(vm: &str) -> ApiError {
    err("VM_MISSING_PV_DRIVERS", [vm])
}

/// `VDI_IN_USE [vdi, ...]`, as `PBD.unplug` raises it for the SR's disks still attached.
pub fn vdis_in_use(vdis: &[String]) -> ApiError {
    ApiError {
        code: "VDI_IN_USE",
        params: vdis.to_vec(),
    }
}

/// `VDI_INCOMPATIBLE_TYPE [vdi, type]`
pub fn vdi_incompatible_type(vdi: &str, ty: &str) -> ApiError {
    err("VDI_INCOMPATIBLE_TYPE", [vdi, ty])
}

/// `VDI_NO_CBT_METADATA [vdi]`
pub fn vdi_no_cbt_metadata(vdi: &str) -> ApiError {
    err("VDI_NO_CBT_METADATA", [vdi])
}

/// `DEVICE_ALREADY_ATTACHED [device]`
pub fn device_already_attached(device: &str) -> ApiError {
    err("DEVICE_ALREADY_ATTACHED", [device])
}

/// `DEVICE_ALREADY_DETACHED [device]`
pub fn device_already_detached(device: &str) -> ApiError {
    err("DEVICE_ALREADY_DETACHED", [device])
}

/// `DEVICE_ALREADY_EXISTS [device]`
pub fn device_already_exists(device: &str) -> ApiError {
    err("DEVICE_ALREADY_EXISTS", [device])
}

/// `DEVICE_DETACH_REJECTED [class, ref, msg]`, as `VBD.unplug` raises it with an empty
/// message (xapi_xenops.ml).
pub fn device_detach_rejected(class: &str, r: &str) -> ApiError {
    err("DEVICE_DETACH_REJECTED", [class, r, ""])
}

/// `VM_REQUIRES_SR [vm, sr]`
pub fn vm_requires_sr(vm: &str, sr: &str) -> ApiError {
    err("VM_REQUIRES_SR", [vm, sr])
}

/// `NO_HOSTS_AVAILABLE []`
pub fn no_hosts_available() -> ApiError {
    err("NO_HOSTS_AVAILABLE", [])
}

/// `VDI_IO_ERROR [msg]`
pub fn vdi_io_error(msg: &str) -> ApiError {
    err("VDI_IO_ERROR", [msg])
}

/// `SR_OPERATION_NOT_SUPPORTED [sr]`
pub fn sr_operation_not_supported(sr: &str) -> ApiError {
    err("SR_OPERATION_NOT_SUPPORTED", [sr])
}

/// `VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION []`
pub fn vdi_on_boot_mode_incompatible_with_operation() -> ApiError {
    err("VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION", [])
}

/// `OPERATION_NOT_ALLOWED [msg]`
pub fn operation_not_allowed(msg: &str) -> ApiError {
    err("OPERATION_NOT_ALLOWED", [msg])
}

/// `SR_BACKEND_FAILURE [status, stdout, stderr]`
pub fn sr_backend_failure(status: &str, stdout: &str, stderr: &str) -> ApiError {
    err("SR_BACKEND_FAILURE", [status, stdout, stderr])
}

/// `SR_BACKEND_FAILURE_<n> ["", msg, ""]`: an SM error with its number, as xapi turns
/// the storage backend's errors into API errors (xen-api `ocaml/xapi/storage_utils.ml`).
pub fn sm_failure(code: &'static str, msg: &str) -> ApiError {
    err(code, ["", msg, ""])
}

/// `SR_UNKNOWN_DRIVER [driver]`
pub fn sr_unknown_driver(driver: &str) -> ApiError {
    err("SR_UNKNOWN_DRIVER", [driver])
}

/// `FIELD_TYPE_ERROR [field]`
pub fn field_type_error(field: &str) -> ApiError {
    err("FIELD_TYPE_ERROR", [field])
}

/// `MAP_DUPLICATE_KEY [type, key, ref, key]`
pub fn map_duplicate_key(class: &str, field: &str, r: &str, key: &str) -> ApiError {
    err("MAP_DUPLICATE_KEY", [class, field, r, key])
}

/// `VALUE_NOT_SUPPORTED [field, value, reason]`
pub fn value_not_supported(field: &str, value: &str, reason: &str) -> ApiError {
    err("VALUE_NOT_SUPPORTED", [field, value, reason])
}

/// `EVENTS_LOST []`: the token is older than the retained event log.
pub fn events_lost() -> ApiError {
    err("EVENTS_LOST", [])
}

/// `INTERNAL_ERROR [msg]`
pub fn internal_error(msg: &str) -> ApiError {
    err("INTERNAL_ERROR", [msg])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_design_table() {
        assert_eq!(
            Response::from(message_parameter_count_mismatch("VM.start", 4, 2)),
            Response::Failure(vec![
                "MESSAGE_PARAMETER_COUNT_MISMATCH".into(),
                "VM.start".into(),
                "4".into(),
                "2".into()
            ])
        );
        assert_eq!(
            vm_bad_power_state("OpaqueRef:v", "Running", "Halted").params,
            ["OpaqueRef:v", "running", "halted"]
        );
        assert_eq!(session_authentication_failed("root").params.len(), 2);
    }
}
