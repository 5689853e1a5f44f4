//! The XAPI methods and the dispatch table that serves them.
//!
//! A call goes through the same checks, in the same order, as in xapi:
//! 1. `MESSAGE_METHOD_UNKNOWN` for a method not in the table;
//! 2. `MESSAGE_PARAMETER_COUNT_MISMATCH` (trailing defaulted parameters may be omitted);
//! 3. `HOST_IS_SLAVE [master]` when the host that received the call is a supporter;
//! 4. `SESSION_INVALID` for an unknown session;
//! 5. the method itself. `Async.X` runs `X` inside a new task and returns the task.
//!
//! The table holds generated per-class calls (getters, setters, `get_all_records`, …) from
//! [`crate::model::classes`] and the hand-written methods of the modules below.
//! `system.listMethods` lists it.

mod event;
mod generic;
mod network;
pub mod params;
mod pool;
mod session;
mod sr;
pub(crate) mod task;
mod vbd;
pub(crate) mod vdi;
mod vm;

use std::collections::BTreeMap;
use std::sync::Arc;

use a3_shared::xapi_wire::{Response, Value};

use crate::errors::{self, ApiError, ApiResult};
use crate::model::Ref;
use crate::state::State;

pub use event::EventQuery;
pub(crate) use network::create_vif;
pub(crate) use sr::{create_sr, host_seeing, host_sees, placement};
pub(crate) use vbd::{VbdSpec, create_vbd};
pub(crate) use vdi::create_vdi;
pub(crate) use vm::{VM_CREATE_FIELDS, create_vm, start_on};

/// The context of a call: the state and the host that received the call.
pub struct Ctx<'a> {
    /// The simulator state.
    pub st: &'a mut State,
    /// The host whose listener received the call.
    pub host: &'a str,
}

/// A method body. `params[0]` is the session when the method takes one.
pub type Handler = Arc<dyn Fn(&mut Ctx<'_>, &[Value]) -> ApiResult<Value> + Send + Sync>;

/// Whether a waiting method may run now.
pub type Ready = fn(&State, &[Value]) -> bool;

/// How a method runs.
#[derive(Clone)]
pub enum Kind {
    /// Runs to completion under the state lock.
    Sync(Handler),
    /// Waits (outside the lock, woken by changes) until `ready` or `timeout`, then runs
    /// the handler under the lock, as xapi methods that wait on events do.
    WaitThen {
        /// True once the method need not wait any longer.
        ready: Ready,
        /// The longest wait.
        timeout: std::time::Duration,
        /// The body, run once the wait is over.
        handler: Handler,
    },
    /// Runs `handler` under the lock, then holds the reply until `settled` (at most
    /// `timeout`) and sends what `reply` says, as xenopsd's device calls wait for the
    /// guest after changing xenstore.
    RunThenWait {
        /// The body, run at once.
        handler: Handler,
        /// True once the effect is complete.
        settled: Ready,
        /// The longest wait.
        timeout: std::time::Duration,
        /// The reply, made once the wait is over.
        reply: Handler,
    },
    /// `event.from`: may wait for events outside the lock.
    EventFrom,
    /// `system.listMethods`: reads the table itself.
    ListMethods,
}

/// One entry of the dispatch table.
#[derive(Clone)]
pub struct Method {
    /// Parameters that must be given, counting the session.
    pub required: usize,
    /// Parameters xapi accepts, counting the session.
    pub max: usize,
    /// Whether the first parameter is a session.
    pub session: bool,
    /// Whether an `Async.` variant exists.
    pub has_async: bool,
    /// The body.
    pub kind: Kind,
}

/// What a call leads to.
pub enum Outcome {
    /// The reply.
    Done(Response),
    /// `event.from` found nothing yet: wait for events up to the timeout, then retry.
    WaitEvents(EventQuery),
    /// A [`Kind::WaitThen`] method must wait: the caller waits, then calls
    /// [`Deferred::finish`]. With `task`, the reply (the task) is sent at once and the task
    /// finishes after the wait.
    Wait(Deferred),
}

/// A call of a [`Kind::WaitThen`] method that waits before it runs.
pub struct Deferred {
    ready: Ready,
    /// When to stop waiting and run anyway.
    pub deadline: std::time::Instant,
    handler: Handler,
    params: Vec<Value>,
    host: String,
    /// The task of an `Async.` call, already pending.
    pub task: Option<Ref>,
}

impl Deferred {
    fn new(
        ready: Ready,
        timeout: std::time::Duration,
        handler: &Handler,
        params: &[Value],
        host: &str,
    ) -> Deferred {
        Deferred {
            ready,
            deadline: std::time::Instant::now() + timeout,
            handler: handler.clone(),
            params: params.to_vec(),
            host: host.to_owned(),
            task: None,
        }
    }

    /// What the call leads to: an `Async.` call gets its pending task at once, a call whose
    /// wait is already over runs now, any other waits.
    fn outcome(mut self, st: &mut State, name: &str, is_async: bool) -> Outcome {
        if is_async {
            self.task = Some(task::create(st, &self.host, name));
        } else if self.ready(st) {
            return Outcome::Done(self.finish(st));
        }
        Outcome::Wait(self)
    }

    /// Whether the wait is over.
    pub fn ready(&self, st: &State) -> bool {
        (self.ready)(st, &self.params) || std::time::Instant::now() >= self.deadline
    }

    /// Runs the method: its reply, or for an `Async.` call the task's reply (the task
    /// ref) after finishing the task with the method's outcome.
    pub fn finish(&self, st: &mut State) -> Response {
        let mut ctx = Ctx {
            st,
            host: &self.host,
        };
        let outcome = (self.handler)(&mut ctx, &self.params);
        match &self.task {
            Some(task) => {
                task::finish(ctx.st, task, outcome);
                Response::Success(Value::from(task.clone()))
            }
            None => match outcome {
                Ok(v) => Response::Success(v),
                Err(e) => e.into(),
            },
        }
    }
}

/// The dispatch table.
pub struct Api {
    methods: BTreeMap<String, Method>,
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

impl Api {
    /// Builds the table of every method served.
    pub fn new() -> Self {
        let mut t = Table::default();
        generic::register(&mut t);
        session::register(&mut t);
        vm::register(&mut t);
        vdi::register(&mut t);
        vbd::register(&mut t);
        sr::register(&mut t);
        network::register(&mut t);
        pool::register(&mut t);
        task::register(&mut t);
        event::register(&mut t);
        t.methods.insert(
            "system.listMethods".into(),
            Method {
                required: 0,
                max: 0,
                session: false,
                has_async: false,
                kind: Kind::ListMethods,
            },
        );
        Api { methods: t.methods }
    }

    /// Every method name, including `Async.` variants, sorted.
    pub fn method_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.methods.keys().cloned().collect();
        names.extend(
            self.methods
                .iter()
                .filter(|(_, m)| m.has_async)
                .map(|(n, _)| format!("Async.{n}")),
        );
        names.sort();
        names
    }

    /// Runs one call received by `host`.
    pub fn call(&self, st: &mut State, host: &str, name: &str, params: &[Value]) -> Outcome {
        match self.call_inner(st, host, name, params) {
            Ok(o) => o,
            Err(e) => Outcome::Done(e.into()),
        }
    }

    fn call_inner(
        &self,
        st: &mut State,
        host: &str,
        name: &str,
        params: &[Value],
    ) -> ApiResult<Outcome> {
        let (is_async, base) = match name.strip_prefix("Async.") {
            Some(base) => (true, base),
            None => (false, name),
        };
        let method = self
            .methods
            .get(base)
            .filter(|m| !is_async || m.has_async)
            .ok_or_else(|| errors::message_method_unknown(name))?;
        if params.len() < method.required || params.len() > method.max {
            return Err(errors::message_parameter_count_mismatch(
                name,
                method.max,
                params.len(),
            ));
        }
        let master = st.master()?;
        if master != host {
            return Err(errors::host_is_slave(&st.host_address(&master)?));
        }
        if method.session {
            let session = params.first().and_then(Value::as_str).unwrap_or("");
            if !st.sessions.contains_key(session) {
                return Err(errors::session_invalid(session));
            }
        }
        // An injected failure comes before any waiting: the call fails as it is made.
        if let Some(e) = crate::faults::take(&mut st.faults, base) {
            return fail(st, host, name, is_async, e);
        }
        let handler = match &method.kind {
            Kind::EventFrom => return event::from(st, params),
            Kind::ListMethods => {
                let names = self.method_names().into_iter().map(Value::from).collect();
                return Ok(Outcome::Done(Response::Success(Value::Array(names))));
            }
            Kind::Sync(h) => match st.knobs.latency_of(base) {
                // A slow pool (a simulated-only knob): the call runs once the delay is over.
                Some(delay) => {
                    let deferred = Deferred::new(|_, _| false, delay, h, params, host);
                    return Ok(deferred.outcome(st, name, is_async));
                }
                None => h,
            },
            Kind::WaitThen {
                ready,
                timeout,
                handler,
            } => {
                let deferred = Deferred::new(*ready, *timeout, handler, params, host);
                return Ok(deferred.outcome(st, name, is_async));
            }
            Kind::RunThenWait {
                handler,
                settled,
                timeout,
                reply,
            } => {
                if let Err(e) = handler(&mut Ctx { st, host }, params) {
                    return fail(st, host, name, is_async, e);
                }
                let deferred = Deferred::new(*settled, *timeout, reply, params, host);
                return Ok(deferred.outcome(st, name, is_async));
            }
        };
        let mut ctx = Ctx { st, host };
        if is_async {
            let task = task::run_async(&mut ctx, name, |ctx| handler(ctx, params));
            return Ok(Outcome::Done(Response::Success(Value::from(task))));
        }
        Ok(Outcome::Done(match handler(&mut ctx, params) {
            Ok(v) => Response::Success(v),
            Err(e) => e.into(),
        }))
    }

    /// Retries an `event.from` after waiting: the batch, or `None` to keep waiting.
    pub fn poll_events(&self, st: &State, query: &EventQuery) -> ApiResult<Option<Value>> {
        event::poll(st, query)
    }

    /// The empty `event.from` batch once its timeout has passed.
    pub fn events_timed_out(&self, st: &State, query: &EventQuery) -> Value {
        event::timed_out(st, query)
    }
}

/// A call failing with `e`: an `Async.` call still gets a task, which holds the failure.
fn fail(st: &mut State, host: &str, name: &str, is_async: bool, e: ApiError) -> ApiResult<Outcome> {
    if is_async {
        let task = task::run_async(&mut Ctx { st, host }, name, |_| Err(e));
        return Ok(Outcome::Done(Response::Success(Value::from(task))));
    }
    Err(e)
}

/// The table under construction.
#[derive(Default)]
pub(crate) struct Table {
    methods: BTreeMap<String, Method>,
}

impl Table {
    /// Adds a method taking a session and `args` more parameters, of which the last
    /// `optional` may be omitted; it has an `Async.` variant.
    pub fn add(
        &mut self,
        name: &str,
        args: usize,
        optional: usize,
        f: impl Fn(&mut Ctx<'_>, &[Value]) -> ApiResult<Value> + Send + Sync + 'static,
    ) {
        self.insert(name, args, optional, true, f);
    }

    /// Like [`Table::add`], for a method that first waits until `ready` (at most
    /// `timeout`), as xapi's `VDI.data_destroy` waits for the VDI's VBDs to go.
    pub fn add_waiting(
        &mut self,
        name: &str,
        args: usize,
        ready: Ready,
        timeout: std::time::Duration,
        f: impl Fn(&mut Ctx<'_>, &[Value]) -> ApiResult<Value> + Send + Sync + 'static,
    ) {
        let kind = Kind::WaitThen {
            ready,
            timeout,
            handler: Arc::new(f),
        };
        self.add_deferred(name, args, kind);
    }

    /// Like [`Table::add`], for a method whose effect completes outside the lock: `f`
    /// runs at once, then the reply waits until `settled` (at most `timeout`) and is what
    /// `reply` returns.
    pub fn add_settling(
        &mut self,
        name: &str,
        args: usize,
        f: impl Fn(&mut Ctx<'_>, &[Value]) -> ApiResult<Value> + Send + Sync + 'static,
        settled: Ready,
        timeout: std::time::Duration,
        reply: impl Fn(&mut Ctx<'_>, &[Value]) -> ApiResult<Value> + Send + Sync + 'static,
    ) {
        let kind = Kind::RunThenWait {
            handler: Arc::new(f),
            settled,
            timeout,
            reply: Arc::new(reply),
        };
        self.add_deferred(name, args, kind);
    }

    /// A session method of `args` arguments, with an `Async.` form, whose reply waits.
    fn add_deferred(&mut self, name: &str, args: usize, kind: Kind) {
        self.methods.insert(
            name.to_owned(),
            Method {
                required: 1 + args,
                max: 1 + args,
                session: true,
                has_async: true,
                kind,
            },
        );
    }

    /// Like [`Table::add`], for field accessors, which have no `Async.` variant.
    pub fn add_accessor(
        &mut self,
        name: &str,
        args: usize,
        f: impl Fn(&mut Ctx<'_>, &[Value]) -> ApiResult<Value> + Send + Sync + 'static,
    ) {
        self.insert(name, args, 0, false, f);
    }

    fn insert(
        &mut self,
        name: &str,
        args: usize,
        optional: usize,
        has_async: bool,
        f: impl Fn(&mut Ctx<'_>, &[Value]) -> ApiResult<Value> + Send + Sync + 'static,
    ) {
        self.methods.insert(
            name.to_owned(),
            Method {
                required: 1 + args - optional,
                max: 1 + args,
                session: true,
                has_async,
                kind: Kind::Sync(Arc::new(f)),
            },
        );
    }

    /// Adds a method with its own parameter rules.
    pub fn add_method(&mut self, name: &str, m: Method) {
        self.methods.insert(name.to_owned(), m);
    }
}

/// The value returned by void methods: xapi sends an empty string.
pub fn void() -> Value {
    Value::from("")
}

/// A set of refs as a value.
pub fn refs(items: impl IntoIterator<Item = Ref>) -> Value {
    Value::Array(items.into_iter().map(Value::from).collect())
}
