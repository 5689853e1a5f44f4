//! `task` records.

use a3_shared::xapi_wire::{Struct, Value};

use super::{map, null, record, set};
use crate::clock;

/// A pending `task` record for `name` on `host`.
pub fn task(uuid: &str, name: &str, host: &str, now: f64) -> Struct {
    record([
        ("uuid", uuid.into()),
        ("name_label", name.into()),
        ("name_description", "".into()),
        ("allowed_operations", set()),
        ("current_operations", map()),
        ("created", Value::DateTime(clock::xapi_datetime(now))),
        ("finished", Value::DateTime(clock::EPOCH.into())),
        ("status", "pending".into()),
        ("resident_on", host.into()),
        ("progress", Value::Double(0.0)),
        ("type", "<none/>".into()),
        ("result", "".into()),
        ("error_info", set()),
        ("other_config", map()),
        ("subtask_of", null()),
        ("subtasks", set()),
        ("backtrace", "()".into()),
    ])
}
