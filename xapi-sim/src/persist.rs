//! The state directory: `state.json` holds the objects, CBT metadata, and credentials;
//! `vdis/` holds VDI content; `tls/` the host certificates.
//!
//! `state.json` is written whole, through a temporary file, fsync and rename, so a crash
//! leaves the previous or the new state, never a torn one. Values are stored with their
//! XAPI type (`{"i":…}` for ints, `{"t":…}` for datetimes, …) so a restart serves
//! exactly the same types.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use a3_shared::xapi_wire::{Struct, Value};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::disks::DiskStoreState;
use crate::model::Ref;

/// Format version of `state.json`.
const STATE_VERSION: u32 = 1;

/// Why the state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a state this version understands.
    #[error(
        "state file {path} is corrupt or from another version ({msg}); move it away to start afresh"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// Everything `state.json` holds.
#[derive(Debug)]
pub struct Saved {
    /// The pool ref.
    pub pool: Ref,
    /// Login user.
    pub username: String,
    /// Login password.
    pub password: String,
    /// The next domid.
    pub next_domid: i64,
    /// The next event id, so tokens stay monotonic across restarts.
    pub next_event: u64,
    /// All objects: class → ref → record.
    pub tables: BTreeMap<String, BTreeMap<Ref, Struct>>,
    /// VDI content metadata and CBT.
    pub disks: DiskStoreState,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    pool: String,
    username: String,
    password: String,
    next_domid: i64,
    next_event: u64,
    tables: BTreeMap<String, BTreeMap<String, Json>>,
    disks: DiskStoreState,
}

/// The path of `state.json` in `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Reads the saved state, `Ok(None)` when the directory has none yet.
pub fn load(dir: &Path) -> Result<Option<Saved>, PersistError> {
    let path = state_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Io { path, source }),
    };
    let corrupt = |msg: String| PersistError::Corrupt {
        path: path.clone(),
        msg,
    };
    let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if d.version != STATE_VERSION {
        return Err(corrupt(format!("version {}", d.version)));
    }
    let mut tables = BTreeMap::new();
    for (class, objs) in d.tables {
        let mut t = BTreeMap::new();
        for (r, rec) in objs {
            match decode(&rec) {
                Some(Value::Struct(s)) => {
                    t.insert(r, s);
                }
                _ => return Err(corrupt(format!("{class} {r} is not a record"))),
            }
        }
        tables.insert(class, t);
    }
    Ok(Some(Saved {
        pool: d.pool,
        username: d.username,
        password: d.password,
        next_domid: d.next_domid,
        next_event: d.next_event,
        tables,
        disks: d.disks,
    }))
}

/// Serialises the state (done under the state lock; the write happens outside it).
pub fn serialize(saved: &Saved) -> Vec<u8> {
    let tables = saved
        .tables
        .iter()
        .map(|(class, objs)| {
            let objs = objs
                .iter()
                .map(|(r, rec)| (r.clone(), encode(&Value::Struct(rec.clone()))))
                .collect();
            (class.clone(), objs)
        })
        .collect();
    let d = OnDisk {
        version: STATE_VERSION,
        pool: saved.pool.clone(),
        username: saved.username.clone(),
        password: saved.password.clone(),
        next_domid: saved.next_domid,
        next_event: saved.next_event,
        tables,
        disks: DiskStoreState {
            disks: saved.disks.disks.clone(),
            write_seq: saved.disks.write_seq,
            nfs_pbds: saved.disks.nfs_pbds.clone(),
        },
    };
    serde_json::to_vec(&d).unwrap_or_default()
}

/// Writes `bytes` as `state.json`, atomically and with mode 0600 (it holds the password).
pub fn write(dir: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let path = state_path(dir);
    let tmp = dir.join("state.json.tmp");
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| PersistError::Io { path: p, source }
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

fn encode(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.clone()),
        Value::Int(i) => json!({ "i": i }),
        Value::Bool(b) => Json::Bool(*b),
        Value::Double(d) => json!({ "d": d }),
        Value::DateTime(s) => json!({ "t": s }),
        Value::Array(a) => Json::Array(a.iter().map(encode).collect()),
        Value::Struct(m) => {
            json!({ "s": m.iter().map(|(k, v)| (k.clone(), encode(v))).collect::<serde_json::Map<_, _>>() })
        }
    }
}

fn decode(j: &Json) -> Option<Value> {
    Some(match j {
        Json::String(s) => Value::String(s.clone()),
        Json::Bool(b) => Value::Bool(*b),
        Json::Array(a) => Value::Array(a.iter().map(decode).collect::<Option<_>>()?),
        Json::Object(o) if o.len() == 1 => {
            let (tag, inner) = o.iter().next()?;
            match tag.as_str() {
                "i" => Value::Int(inner.as_i64()?),
                "d" => Value::Double(inner.as_f64()?),
                "t" => Value::DateTime(inner.as_str()?.to_owned()),
                "s" => Value::Struct(
                    inner
                        .as_object()?
                        .iter()
                        .map(|(k, v)| Some((k.clone(), decode(v)?)))
                        .collect::<Option<_>>()?,
                ),
                _ => return None,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_types() {
        let rec: Value = [
            ("a", Value::Int(-3)),
            ("b", Value::Double(0.5)),
            ("c", Value::DateTime("20240101T00:00:00Z".into())),
            ("d", Value::Array(vec![Value::from("x"), Value::Bool(true)])),
            ("e", Value::empty_struct()),
        ]
        .into_iter()
        .collect();
        assert_eq!(decode(&encode(&rec)), Some(rec));
    }

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut vm = BTreeMap::new();
        vm.insert(
            "OpaqueRef:1".to_owned(),
            [("memory_static_max".to_owned(), Value::Int(1 << 30))]
                .into_iter()
                .collect::<Struct>(),
        );
        let saved = Saved {
            pool: "OpaqueRef:p".into(),
            username: "root".into(),
            password: "pw".into(),
            next_domid: 7,
            next_event: 42,
            tables: [("VM".to_owned(), vm)].into_iter().collect(),
            disks: DiskStoreState::default(),
        };
        write(dir.path(), &serialize(&saved)).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.tables, saved.tables);
        assert_eq!((back.next_domid, back.next_event), (7, 42));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(state_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
