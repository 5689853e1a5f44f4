//! Tasks: `Async.*` calls and `task.cancel` / `task.destroy`.
//!
//! Every simulated operation completes at once, so an async call creates its task,
//! runs the operation and finishes the task before replying; clients still see the
//! task's `add` and `mod` events and poll it as with xapi.

use a3_shared::xapi_wire::{Value, xmlrpc};

use super::{Ctx, Table, params, void};
use crate::clock;
use crate::errors::{self, ApiResult};
use crate::model::{Ref, new_ref, new_uuid, task};

pub(super) fn register(t: &mut Table) {
    // A client creates a task to follow an HTTP import or export (`?task_id=`).
    t.add("task.create", 2, 0, |ctx, p| {
        let label = params::string(p, 1, "label")?.to_owned();
        let description = params::string(p, 2, "description")?.to_owned();
        let r = new_ref();
        let mut rec = task::task(&new_uuid(), &label, ctx.host, clock::unix_now());
        rec.insert("name_description".into(), description.into());
        ctx.st.db.insert("task", r.clone(), rec);
        Ok(Value::from(r))
    });
    t.add("task.cancel", 1, 0, |ctx, p| {
        let task = params::object(ctx.st, p, 1, "task")?;
        let status = ctx.st.db.str_field("task", &task, "status")?;
        if status != "pending" {
            return Err(errors::operation_not_allowed(&format!(
                "task {task} is already {status}"
            )));
        }
        ctx.st.db.set("task", &task, "status", "cancelled")?;
        Ok(void())
    });
    t.add("task.destroy", 1, 0, |ctx, p| {
        let task = params::object(ctx.st, p, 1, "task")?;
        ctx.st.db.remove("task", &task)?;
        Ok(void())
    });
}

/// Runs `f` as the task of the async call `name`; returns the task ref.
pub(super) fn run_async(
    ctx: &mut Ctx<'_>,
    name: &str,
    f: impl FnOnce(&mut Ctx<'_>) -> ApiResult<Value>,
) -> Ref {
    let r = new_ref();
    let now = clock::unix_now();
    ctx.st.db.insert(
        "task",
        r.clone(),
        task::task(&new_uuid(), name, ctx.host, now),
    );
    let outcome = f(ctx);
    let finished = Value::DateTime(clock::xapi_datetime(clock::unix_now()));
    // The task exists: it was inserted above and only this call knows its ref yet.
    let _ = ctx.st.db.update("task", &r, |rec| {
        rec.insert("finished".into(), finished);
        rec.insert("progress".into(), Value::Double(1.0));
        match outcome {
            Ok(v) => {
                rec.insert("status".into(), "success".into());
                // xapi stores the result XML-RPC encoded; a void result is "".
                let result = if v == void() {
                    String::new()
                } else {
                    xmlrpc::encode_value(&v)
                };
                rec.insert("result".into(), result.into());
            }
            Err(e) => {
                rec.insert("status".into(), "failure".into());
                let info = std::iter::once(e.code.to_owned()).chain(e.params);
                rec.insert(
                    "error_info".into(),
                    Value::Array(info.map(Value::from).collect()),
                );
            }
        }
    });
    r
}
