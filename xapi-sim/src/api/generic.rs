//! The calls every class has: `get_all`, `get_all_records`, `get_record`, `get_by_uuid`,
//! `get_by_name_label`, one getter per field, and the setters and map calls of the
//! fields a client may change.

use a3_shared::xapi_wire::{Struct, Value};

use super::params;
use super::{Table, refs, void};
use crate::errors;
use crate::model::classes::{CLASSES, ClassSpec};

pub(super) fn register(t: &mut Table) {
    for spec in CLASSES {
        register_class(t, spec);
    }
}

fn register_class(t: &mut Table, spec: &'static ClassSpec) {
    let class = spec.name;
    let template = (spec.template)();

    t.add_accessor(&format!("{class}.get_all"), 0, move |ctx, _| {
        Ok(refs(ctx.st.db.table(class).map(|(r, _)| r.clone())))
    });
    t.add_accessor(&format!("{class}.get_all_records"), 0, move |ctx, _| {
        Ok(Value::Struct(
            ctx.st
                .db
                .table(class)
                .map(|(r, rec)| (r.clone(), Value::Struct(rec.clone())))
                .collect(),
        ))
    });
    t.add_accessor(&format!("{class}.get_record"), 1, move |ctx, p| {
        let r = params::string(p, 1, "self")?;
        Ok(Value::Struct(ctx.st.db.get(class, r)?.clone()))
    });
    t.add_accessor(&format!("{class}.get_by_uuid"), 1, move |ctx, p| {
        let uuid = params::string(p, 1, "uuid")?;
        Ok(Value::from(ctx.st.db.by_uuid(class, uuid)?))
    });
    if template.contains_key("name_label") {
        t.add_accessor(&format!("{class}.get_by_name_label"), 1, move |ctx, p| {
            let label = params::string(p, 1, "label")?;
            Ok(refs(
                ctx.st
                    .db
                    .table(class)
                    .filter(|(_, rec)| rec.get("name_label").and_then(Value::as_str) == Some(label))
                    .map(|(r, _)| r.clone()),
            ))
        });
    }
    for field in template.keys() {
        let name = format!("{class}.get_{field}");
        let field = field.clone();
        t.add_accessor(&name, 1, move |ctx, p| {
            let r = params::string(p, 1, "self")?;
            Ok(ctx.st.db.field(class, r, &field)?.clone())
        });
    }
    for &field in spec.settable {
        let like = template[field].clone();
        t.add_accessor(&format!("{class}.set_{field}"), 2, move |ctx, p| {
            let r = params::string(p, 1, "self")?;
            ctx.st.db.get(class, r)?;
            let v = params::coerce(field, &like, p[2].clone())?;
            ctx.st.db.set(class, r, field, v)?;
            Ok(void())
        });
    }
    for &field in spec.maps {
        t.add_accessor(&format!("{class}.add_to_{field}"), 3, move |ctx, p| {
            let r = params::string(p, 1, "self")?.to_owned();
            let key = params::string(p, 2, "key")?.to_owned();
            let value = params::string(p, 3, "value")?.to_owned();
            let existing = map_of(ctx.st.db.get(class, &r)?, field);
            if existing.contains_key(&key) {
                return Err(errors::map_duplicate_key(class, field, &r, &key));
            }
            ctx.st.db.update(class, &r, |rec| {
                if let Some(Value::Struct(m)) = rec.get_mut(field) {
                    m.insert(key, Value::from(value));
                }
            })?;
            Ok(void())
        });
        t.add_accessor(&format!("{class}.remove_from_{field}"), 2, move |ctx, p| {
            let r = params::string(p, 1, "self")?.to_owned();
            let key = params::string(p, 2, "key")?.to_owned();
            ctx.st.db.update(class, &r, |rec| {
                if let Some(Value::Struct(m)) = rec.get_mut(field) {
                    m.remove(&key);
                }
            })?;
            Ok(void())
        });
    }
}

fn map_of(rec: &Struct, field: &str) -> Struct {
    rec.get(field)
        .and_then(Value::as_struct)
        .cloned()
        .unwrap_or_default()
}
