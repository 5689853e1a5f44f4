//! The object model: the database and the record shape of every XAPI class.
//!
//! Each class group's module builds the records real xapi returns, with the fields
//! clients read (names checked against the xen-api datamodel). Ints are `Value::Int`
//! here and travel as bare strings over XML-RPC.

pub mod classes;
pub mod db;
pub mod host;
pub mod network;
pub mod storage;
pub mod task;
pub mod vm;

use a3_shared::xapi_wire::{NULL_REF, Struct, Value};

pub use db::{Db, Event, Op, Ref, new_ref, new_uuid};

/// Builds a record from `(field, value)` pairs.
pub(crate) fn record<const N: usize>(fields: [(&str, Value); N]) -> Struct {
    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// An empty set.
pub(crate) fn set() -> Value {
    Value::Array(Vec::new())
}

/// An empty map.
pub(crate) fn map() -> Value {
    Value::empty_struct()
}

/// The null reference.
pub(crate) fn null() -> Value {
    Value::from(NULL_REF)
}

/// A string-to-string map.
pub(crate) fn str_map<const N: usize>(pairs: [(&str, &str); N]) -> Value {
    pairs.into_iter().collect()
}
