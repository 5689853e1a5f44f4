//! Reading typed call parameters; a wrong type is `FIELD_TYPE_ERROR [name]`, a
//! dangling ref `HANDLE_INVALID [class, ref]`.

use a3_shared::xapi_wire::{Struct, Value};

use crate::errors::{self, ApiResult};
use crate::model::Ref;
use crate::state::State;

/// The parameter at `i`, or `None` when a trailing default was omitted.
pub fn opt(params: &[Value], i: usize) -> Option<&Value> {
    params.get(i)
}

/// A string parameter.
pub fn string<'a>(params: &'a [Value], i: usize, name: &str) -> ApiResult<&'a str> {
    params
        .get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| errors::field_type_error(name))
}

/// A ref to an existing object of `class`.
pub fn object(st: &State, params: &[Value], i: usize, class: &str) -> ApiResult<Ref> {
    let r = string(params, i, class)?;
    st.db.get(class, r)?;
    Ok(r.to_owned())
}

/// A boolean parameter (also accepts `"true"`/`"false"`).
pub fn boolean(params: &[Value], i: usize, name: &str) -> ApiResult<bool> {
    match params.get(i) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        _ => Err(errors::field_type_error(name)),
    }
}

/// An int parameter, as `Int` or a decimal string.
pub fn int(params: &[Value], i: usize, name: &str) -> ApiResult<i64> {
    params
        .get(i)
        .and_then(Value::as_i64)
        .ok_or_else(|| errors::field_type_error(name))
}

/// A float parameter, as `Double`, `Int` or a numeric string.
pub fn float(params: &[Value], i: usize, name: &str) -> ApiResult<f64> {
    params
        .get(i)
        .and_then(Value::as_f64)
        .ok_or_else(|| errors::field_type_error(name))
}

/// A map or record parameter.
pub fn record<'a>(params: &'a [Value], i: usize, name: &str) -> ApiResult<&'a Struct> {
    params
        .get(i)
        .and_then(Value::as_struct)
        .ok_or_else(|| errors::field_type_error(name))
}

/// A set-of-strings parameter.
pub fn strings(params: &[Value], i: usize, name: &str) -> ApiResult<Vec<String>> {
    params
        .get(i)
        .and_then(Value::as_array)
        .ok_or_else(|| errors::field_type_error(name))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| errors::field_type_error(name))
        })
        .collect()
}

/// Field `name` of a record argument, coerced to the type of `default`; the default when
/// the field is absent. XAPI fills omitted record fields with their defaults.
pub fn field(rec: &Struct, name: &str, default: Value) -> ApiResult<Value> {
    match rec.get(name) {
        None => Ok(default),
        Some(v) => coerce(name, &default, v.clone()),
    }
}

/// Converts `v` to the type of `like`, as xapi's unmarshalling does (ints arrive as
/// strings over XML-RPC).
pub fn coerce(name: &str, like: &Value, v: Value) -> ApiResult<Value> {
    let bad = || errors::field_type_error(name);
    Ok(match (like, v) {
        (Value::Int(_), v) => Value::Int(v.as_i64().ok_or_else(bad)?),
        (Value::Double(_), v) => Value::Double(v.as_f64().ok_or_else(bad)?),
        (Value::Bool(_), Value::Bool(b)) => Value::Bool(b),
        (Value::Bool(_), Value::String(s)) if s == "true" || s == "false" => {
            Value::Bool(s == "true")
        }
        (Value::DateTime(_), Value::String(s) | Value::DateTime(s)) => Value::DateTime(s),
        (Value::String(_), Value::String(s)) => Value::String(s),
        (Value::Array(_), Value::Array(a)) => Value::Array(a),
        (Value::Struct(_), Value::Struct(m)) => {
            // Maps are string → string in every field we accept.
            for v in m.values() {
                if v.as_str().is_none() {
                    return Err(bad());
                }
            }
            Value::Struct(m)
        }
        _ => return Err(bad()),
    })
}
