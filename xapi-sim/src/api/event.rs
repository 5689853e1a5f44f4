//! `event.from` and `event.inject`.
//!
//! `event.from(classes, token, timeout)` returns the events after `token` for the given
//! classes (`*` for all, or `class/ref` for one object). An empty token returns every
//! current object as an `add` event, which is how clients take their first inventory.
//! When nothing is pending the server waits, outside the state lock, until an event
//! arrives or the timeout passes ([`Outcome::WaitEvents`]).

use std::time::Duration;

use a3_shared::xapi_wire::{Struct, Value};

use super::{Kind, Method, Outcome, Table, params};
use crate::clock;
use crate::errors::{self, ApiResult};
use crate::model::{Event, Op, classes};
use crate::state::State;

/// A pending `event.from`.
#[derive(Debug, Clone)]
pub struct EventQuery {
    filters: Vec<Filter>,
    after: u64,
    /// How long the caller is willing to wait.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
struct Filter {
    class: Option<&'static str>,
    r: Option<String>,
}

impl Filter {
    fn matches(&self, class: &str, r: &str) -> bool {
        self.class.is_none_or(|c| c == class) && self.r.as_deref().is_none_or(|x| x == r)
    }
}

pub(super) fn register(t: &mut Table) {
    t.add_method(
        "event.from",
        Method {
            required: 4,
            max: 4,
            session: true,
            has_async: false,
            kind: Kind::EventFrom,
        },
    );
    t.add_accessor("event.inject", 2, |ctx, p| {
        let class = params::string(p, 1, "class")?;
        let r = params::string(p, 2, "ref")?;
        let class = classes::canonical(class).ok_or_else(|| errors::handle_invalid(class, r))?;
        let id = ctx.st.db.inject(class, r)?;
        Ok(Value::from(token(id)))
    });
}

fn token(id: u64) -> String {
    format!("{id:020}")
}

/// Runs `event.from`: the events now, or a query to wait on.
pub(super) fn from(st: &State, p: &[Value]) -> ApiResult<Outcome> {
    let names = params::strings(p, 1, "classes")?;
    let tok = params::string(p, 2, "token")?;
    let timeout = params::float(p, 3, "timeout")?;
    let mut filters = Vec::new();
    for n in &names {
        let (class, r) = match n.split_once('/') {
            Some((c, r)) => (c, Some(r.to_owned())),
            None => (n.as_str(), None),
        };
        let class = if class == "*" {
            None
        } else {
            // Unknown classes match nothing, as in xapi.
            match classes::canonical(class) {
                Some(c) => Some(c),
                None => continue,
            }
        };
        filters.push(Filter { class, r });
    }
    if tok.is_empty() {
        return Ok(Outcome::Done(a3_shared::xapi_wire::Response::Success(
            current_objects(st, &filters),
        )));
    }
    let after = tok
        .trim()
        .parse::<u64>()
        .map_err(|_| errors::value_not_supported("token", tok, "not a token from event.from"))?;
    let query = EventQuery {
        filters,
        after,
        timeout: Duration::from_secs_f64(timeout.clamp(0.0, 3600.0)),
    };
    match poll(st, &query)? {
        Some(v) => Ok(Outcome::Done(a3_shared::xapi_wire::Response::Success(v))),
        None if query.timeout.is_zero() => Ok(Outcome::Done(
            a3_shared::xapi_wire::Response::Success(timed_out(st, &query)),
        )),
        None => Ok(Outcome::WaitEvents(query)),
    }
}

/// The batch of events for `query` if any is pending; `Ok(None)` to keep waiting.
pub(super) fn poll(st: &State, query: &EventQuery) -> ApiResult<Option<Value>> {
    let events = st
        .db
        .events_after(query.after)
        .ok_or_else(errors::events_lost)?;
    let matching: Vec<Value> = events
        .filter(|e| query.filters.iter().any(|f| f.matches(&e.class, &e.r)))
        .map(event_value)
        .collect();
    if matching.is_empty() {
        return Ok(None);
    }
    Ok(Some(batch(
        st,
        &query.filters,
        matching,
        st.db.last_event_id(),
    )))
}

/// The reply after waiting in vain: no events, and a token to continue from.
pub fn timed_out(st: &State, query: &EventQuery) -> Value {
    batch(
        st,
        &query.filters,
        Vec::new(),
        query.after.max(st.db.last_event_id()),
    )
}

fn current_objects(st: &State, filters: &[Filter]) -> Value {
    let now = clock::unix_now();
    let mut events = Vec::new();
    for spec in classes::CLASSES {
        for (r, rec) in st.db.table(spec.name) {
            if filters.iter().any(|f| f.matches(spec.name, r)) {
                events.push(event_value(&Event {
                    id: st.db.last_event_id(),
                    time: now,
                    class: spec.name.to_owned(),
                    op: Op::Add,
                    r: r.clone(),
                    snapshot: Some(rec.clone()),
                }));
            }
        }
    }
    batch(st, filters, events, st.db.last_event_id())
}

fn batch(st: &State, filters: &[Filter], events: Vec<Value>, last: u64) -> Value {
    let counts: Struct = classes::CLASSES
        .iter()
        .filter(|c| filters.iter().any(|f| f.class.is_none_or(|x| x == c.name)))
        .map(|c| {
            (
                c.name.to_lowercase(),
                Value::Int(st.db.count(c.name) as i64),
            )
        })
        .collect();
    [
        ("events", Value::Array(events)),
        ("valid_ref_counts", Value::Struct(counts)),
        ("token", Value::from(token(last))),
    ]
    .into_iter()
    .collect()
}

fn event_value(e: &Event) -> Value {
    let mut v: Struct = [
        ("id".to_owned(), Value::from(e.id.to_string())),
        (
            "timestamp".to_owned(),
            Value::from(format!("{:.6}", e.time)),
        ),
        ("class".to_owned(), Value::from(e.class.to_lowercase())),
        ("operation".to_owned(), Value::from(e.op.as_str())),
        ("ref".to_owned(), Value::from(e.r.clone())),
    ]
    .into_iter()
    .collect();
    if let Some(s) = &e.snapshot {
        v.insert("snapshot".into(), Value::Struct(s.clone()));
    }
    Value::Struct(v)
}
