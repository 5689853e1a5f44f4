//! Tasks: `Async.*` calls and `task.cancel` / `task.destroy`.
//!
//! Most simulated operations complete at once, so an async call creates its task, runs
//! the operation and finishes the task before replying; clients still see the task's
//! `add` and `mod` events and poll it as with xapi. A method that waits
//! ([`super::Kind::WaitThen`]) replies with its pending task and finishes it later.

use a3_shared::xapi_wire::{Value, xmlrpc};

use super::{Ctx, Table, params, void};
use crate::clock;
use crate::errors::{self, ApiResult};
use crate::model::{Ref, new_ref, new_uuid, task};
use crate::state::State;

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
    let r = create(ctx.st, ctx.host, name);
    let outcome = f(ctx);
    finish(ctx.st, &r, outcome);
    r
}

/// A pending task for the async call `name` received by `host`.
pub(crate) fn create(st: &mut State, host: &str, name: &str) -> Ref {
    let r = new_ref();
    let now = clock::unix_now();
    st.db
        .insert("task", r.clone(), task::task(&new_uuid(), name, host, now));
    r
}

/// Finishes a task with the outcome of its operation.
pub(crate) fn finish(st: &mut State, r: &str, outcome: ApiResult<Value>) {
    let finished = Value::DateTime(clock::xapi_datetime(clock::unix_now()));
    // A client may have destroyed the task meanwhile: then there is nothing to report to.
    let _ = st.db.update("task", r, |rec| {
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
}

/// The task an HTTP handler reports through: the client's `task_id` (which must be
/// pending; make one with `task.create`), else a new one labelled `label`.
pub(crate) fn for_http(
    st: &mut State,
    host: &str,
    task_id: &str,
    label: &str,
) -> Result<Ref, String> {
    match task_id {
        "" => Ok(create(st, host, label)),
        t if st.db.str_field("task", t, "status").as_deref() == Ok("pending") => Ok(t.to_owned()),
        t => Err(format!(
            "task_id {t:?} is not a pending task; create one with task.create"
        )),
    }
}
