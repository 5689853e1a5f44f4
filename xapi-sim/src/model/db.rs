//! The object database: one table of records per XAPI class, and the event log every
//! change is written to.
//!
//! Records are plain XAPI structs ([`Struct`]) shaped by the class defaults in
//! [`super::classes`], so field getters, `get_record`, events and persistence need no
//! per-class code. Every insert, update and removal appends an `add`, `mod` or `del`
//! event, which is what `event.from` serves.

use std::collections::{BTreeMap, VecDeque};

use a3_shared::xapi_wire::{Struct, Value};

use crate::clock;
use crate::errors::{self, ApiResult};

/// An object reference, `OpaqueRef:<uuid>`.
pub type Ref = String;

/// How many events are kept for `event.from`; an older token gets `EVENTS_LOST`.
const EVENT_LOG_LEN: usize = 50_000;

/// A new random reference.
pub fn new_ref() -> Ref {
    format!("OpaqueRef:{}", uuid::Uuid::new_v4())
}

/// A new random uuid.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Created.
    Add,
    /// Changed.
    Mod,
    /// Destroyed.
    Del,
}

impl Op {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Mod => "mod",
            Op::Del => "del",
        }
    }
}

/// One change, as `event.from` reports it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Monotonic id; tokens are ids.
    pub id: u64,
    /// Unix time of the change.
    pub time: f64,
    /// The XAPI class name (e.g. `VM`); lower-cased on the wire.
    pub class: String,
    /// What happened.
    pub op: Op,
    /// The object.
    pub r: Ref,
    /// The record after the change (`None` for `del`).
    pub snapshot: Option<Struct>,
}

/// All objects and the recent events.
#[derive(Debug, Default)]
pub struct Db {
    tables: BTreeMap<String, BTreeMap<Ref, Struct>>,
    events: VecDeque<Event>,
    next_event: u64,
    quiet: bool,
}

impl Db {
    /// An empty database whose first event will have id `first_event`.
    pub fn new(first_event: u64) -> Self {
        Db {
            tables: BTreeMap::new(),
            events: VecDeque::new(),
            next_event: first_event.max(1),
            quiet: false,
        }
    }

    /// Stops (`true`) or resumes logging events. Building a fresh pool is quiet: nobody
    /// can hold a token yet, and thousands of record snapshots would only cost memory.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// The table of one class (empty if there are no objects).
    pub fn table(&self, class: &str) -> impl Iterator<Item = (&Ref, &Struct)> {
        self.tables.get(class).into_iter().flat_map(|t| t.iter())
    }

    /// How many objects a class has.
    pub fn count(&self, class: &str) -> usize {
        self.tables.get(class).map_or(0, BTreeMap::len)
    }

    /// A record, or `HANDLE_INVALID [class, ref]`.
    pub fn get(&self, class: &str, r: &str) -> ApiResult<&Struct> {
        self.tables
            .get(class)
            .and_then(|t| t.get(r))
            .ok_or_else(|| errors::handle_invalid(class, r))
    }

    /// True when the object exists.
    pub fn exists(&self, class: &str, r: &str) -> bool {
        self.tables.get(class).is_some_and(|t| t.contains_key(r))
    }

    /// A field of a record (`HANDLE_INVALID` if the object does not exist).
    pub fn field(&self, class: &str, r: &str, field: &str) -> ApiResult<&Value> {
        let rec = self.get(class, r)?;
        rec.get(field)
            .ok_or_else(|| errors::internal_error(&format!("{class}.{field} is missing")))
    }

    /// A string field (refs, enums, names); "" when missing or not a string.
    pub fn str_field(&self, class: &str, r: &str, field: &str) -> ApiResult<String> {
        Ok(self
            .field(class, r, field)?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// A set-of-refs field.
    pub fn refs_field(&self, class: &str, r: &str, field: &str) -> ApiResult<Vec<Ref>> {
        Ok(self
            .field(class, r, field)?
            .as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// The ref of the object of `class` with this uuid.
    pub fn by_uuid(&self, class: &str, uuid: &str) -> ApiResult<Ref> {
        self.table(class)
            .find(|(_, rec)| rec.get("uuid").and_then(Value::as_str) == Some(uuid))
            .map(|(r, _)| r.clone())
            .ok_or_else(|| errors::uuid_invalid(class, uuid))
    }

    /// Adds an object and logs `add`.
    pub fn insert(&mut self, class: &str, r: Ref, rec: Struct) {
        self.tables
            .entry(class.to_owned())
            .or_default()
            .insert(r.clone(), rec.clone());
        self.log(class, Op::Add, r, Some(rec));
    }

    /// Changes an object through `f` and logs `mod`.
    pub fn update<T>(
        &mut self,
        class: &str,
        r: &str,
        f: impl FnOnce(&mut Struct) -> T,
    ) -> ApiResult<T> {
        let rec = self
            .tables
            .get_mut(class)
            .and_then(|t| t.get_mut(r))
            .ok_or_else(|| errors::handle_invalid(class, r))?;
        let out = f(rec);
        let snapshot = rec.clone();
        self.log(class, Op::Mod, r.to_owned(), Some(snapshot));
        Ok(out)
    }

    /// Sets one field and logs `mod`.
    pub fn set(
        &mut self,
        class: &str,
        r: &str,
        field: &str,
        value: impl Into<Value>,
    ) -> ApiResult<()> {
        let value = value.into();
        self.update(class, r, |rec| {
            rec.insert(field.to_owned(), value);
        })
    }

    /// Adds `item` to a set field (once).
    pub fn add_to_set(&mut self, class: &str, r: &str, field: &str, item: &str) -> ApiResult<()> {
        self.update(class, r, |rec| {
            if let Some(Value::Array(items)) = rec.get_mut(field)
                && !items.iter().any(|v| v.as_str() == Some(item))
            {
                items.push(Value::from(item));
            }
        })
    }

    /// Removes `item` from a set field; a missing object is ignored, because the other
    /// end of a relation may already be gone.
    pub fn remove_from_set(&mut self, class: &str, r: &str, field: &str, item: &str) {
        if self.exists(class, r) {
            let _ = self.update(class, r, |rec| {
                if let Some(Value::Array(items)) = rec.get_mut(field) {
                    items.retain(|v| v.as_str() != Some(item));
                }
            });
        }
    }

    /// Removes an object and logs `del`.
    pub fn remove(&mut self, class: &str, r: &str) -> ApiResult<Struct> {
        let rec = self
            .tables
            .get_mut(class)
            .and_then(|t| t.remove(r))
            .ok_or_else(|| errors::handle_invalid(class, r))?;
        self.log(class, Op::Del, r.to_owned(), None);
        Ok(rec)
    }

    /// Logs a `mod` event for an unchanged object (`event.inject`).
    pub fn inject(&mut self, class: &str, r: &str) -> ApiResult<u64> {
        let snapshot = self.get(class, r)?.clone();
        self.log(class, Op::Mod, r.to_owned(), Some(snapshot));
        Ok(self.last_event_id())
    }

    /// The id of the newest event (0 before any).
    pub fn last_event_id(&self) -> u64 {
        self.next_event - 1
    }

    /// Events newer than `after`, or `None` when some of them were already dropped.
    pub fn events_after(&self, after: u64) -> Option<impl Iterator<Item = &Event>> {
        let oldest_kept = self.events.front().map_or(self.next_event, |e| e.id);
        if after + 1 < oldest_kept {
            return None;
        }
        Some(self.events.iter().filter(move |e| e.id > after))
    }

    fn log(&mut self, class: &str, op: Op, r: Ref, snapshot: Option<Struct>) {
        if self.quiet {
            return;
        }
        let id = self.next_event;
        self.next_event += 1;
        if self.events.len() == EVENT_LOG_LEN {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            id,
            time: clock::unix_now(),
            class: class.to_owned(),
            op,
            r,
            snapshot,
        });
    }

    /// Every table, for persistence and the control API's inventory dump.
    pub fn tables(&self) -> &BTreeMap<String, BTreeMap<Ref, Struct>> {
        &self.tables
    }

    /// Restores tables read back from disk, without logging events.
    pub fn load_tables(&mut self, tables: BTreeMap<String, BTreeMap<Ref, Struct>>) {
        self.tables = tables;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str) -> Struct {
        [
            ("uuid".to_owned(), Value::from(new_uuid())),
            ("name_label".to_owned(), Value::from(name)),
            ("VBDs".to_owned(), Value::Array(vec![])),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn changes_are_logged_in_order() {
        let mut db = Db::new(1);
        let r = new_ref();
        db.insert("VM", r.clone(), rec("a"));
        db.set("VM", &r, "name_label", "b").unwrap();
        db.add_to_set("VM", &r, "VBDs", "OpaqueRef:x").unwrap();
        db.add_to_set("VM", &r, "VBDs", "OpaqueRef:x").unwrap();
        assert_eq!(db.refs_field("VM", &r, "VBDs").unwrap(), ["OpaqueRef:x"]);
        db.remove("VM", &r).unwrap();
        let ops: Vec<_> = db.events_after(0).unwrap().map(|e| e.op).collect();
        assert_eq!(ops, [Op::Add, Op::Mod, Op::Mod, Op::Mod, Op::Del]);
        assert_eq!(db.events_after(4).unwrap().count(), 1);
        assert_eq!(
            db.get("VM", &r).unwrap_err(),
            errors::handle_invalid("VM", &r)
        );
    }
}
