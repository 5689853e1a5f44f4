//! Copies of the catalog kept in the store, so that job history survives the loss of the
//! catalog file: an online snapshot taken after each run ([`Catalog::snapshot_to`]), and
//! the import of its job history into a rebuilt catalog ([`Catalog::import_job_history`]).
//! Versions are never taken from a snapshot: the store's version records are their truth.
//! The instance id comes back with the history: the same store is the same A3.

use std::path::Path;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};

/// The job tables (`catalog::jobs`), parents first, with their columns.
const JOB_TABLES: &[(&str, &str)] = &[
    ("jobs", "id, kind, spec, created_at"),
    ("runs", "id, job, state, started_at, ended_at, reason"),
    (
        "run_items",
        "run, subject, label, state, abd, version, reason",
    ),
    ("run_log", "id, run, at_ms, level, message"),
    (
        "run_checks",
        "id, run, abd, source, name, status, detail, remedy",
    ),
];

/// What [`Catalog::import_job_history`] brought back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobHistory {
    /// Jobs.
    pub jobs: u64,
    /// Runs.
    pub runs: u64,
    /// Log lines.
    pub log_lines: u64,
    /// Runs the snapshot shows running: marked failed, since their end was never recorded.
    pub runs_unfinished: u64,
}

impl Catalog {
    /// Writes a consistent copy of the whole catalog to `dest` (a new file) with SQLite's
    /// online backup. The copy is one step over a read transaction of its own connection:
    /// in WAL mode it does not block writers, and writers cannot restart it, so it takes
    /// one pass over the file.
    pub fn snapshot_to(&self, dest: &Path) -> Result<(), CatalogError> {
        let mut dst = Connection::open(dest).map_err(|e| self.error(e))?;
        let copied = if self.path == Path::new(":memory:") {
            copy_all(&self.lock(), &mut dst)
        } else {
            Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|src| {
                src.busy_timeout(std::time::Duration::from_secs(5))?;
                copy_all(&src, &mut dst)
            })
        };
        copied.map_err(|e| self.error(e))?;
        dst.close().map_err(|(_, e)| self.error(e))
    }

    /// Copies the job history (jobs, runs, their VMs, logs and checks) of the snapshot at
    /// `snapshot` into this catalog, keeping ids, when this catalog has no job yet;
    /// `None` when it has (its own history is kept, and a second rebuild changes nothing).
    /// Runs the snapshot shows running never recorded their end: they are marked failed,
    /// so that nothing treats them as live.
    pub fn import_job_history(&self, snapshot: &Path) -> Result<Option<JobHistory>, CatalogError> {
        let conn = self.lock();
        let err = |e| self.error(e);
        let jobs: i64 = conn
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .map_err(err)?;
        if jobs > 0 {
            return Ok(None);
        }
        let path = snapshot.to_str().ok_or_else(|| CatalogError::Io {
            path: snapshot.to_owned(),
            source: std::io::Error::other("the snapshot's path is not UTF-8"),
        })?;
        conn.execute("ATTACH DATABASE ?1 AS snap", [path])
            .map_err(err)?;
        let imported = (|| {
            let tx = conn.unchecked_transaction()?;
            let mut counts = Vec::new();
            for (table, columns) in JOB_TABLES {
                counts.push(tx.execute(
                    &format!(
                        "INSERT OR IGNORE INTO main.{table} ({columns}) \
                         SELECT {columns} FROM snap.{table}"
                    ),
                    [],
                )? as u64);
            }
            // The same store is the same A3: its instance id comes back too, so that the
            // reconciler removes what its runs left. This catalog ran no job (checked
            // above), so nothing carries the id it may have made meanwhile.
            let has_instance: i64 = tx.query_row(
                "SELECT COUNT(*) FROM snap.sqlite_master WHERE type = 'table' AND name = 'instance'",
                [],
                |r| r.get(0),
            )?;
            if has_instance > 0 {
                tx.execute(
                    "INSERT OR REPLACE INTO main.instance (only_row, id)
                     SELECT only_row, id FROM snap.instance",
                    [],
                )?;
            }
            let reason = "interrupted: its end was not recorded before the catalog was \
                          lost and rebuilt from the store; the reconciler removes what it \
                          left in the pools";
            let unfinished = tx.execute(
                "UPDATE runs SET state = 'failed', reason = ?1 WHERE state = 'running'",
                [reason],
            )? as u64;
            tx.execute(
                "UPDATE run_items SET state = 'failed', reason = ?1
                 WHERE state IN ('pending', 'running')",
                [reason],
            )?;
            tx.commit()?;
            Ok(JobHistory {
                jobs: counts[0],
                runs: counts[1],
                log_lines: counts[3],
                runs_unfinished: unfinished,
            })
        })();
        let detached = conn.execute("DETACH DATABASE snap", []);
        let history = imported.map_err(err)?;
        detached.map_err(err)?;
        Ok(Some(history))
    }
}

/// The whole of `src` into `dst`, in one backup step.
fn copy_all(src: &Connection, dst: &mut Connection) -> rusqlite::Result<()> {
    let backup = Backup::new(src, dst)?;
    match backup.step(-1)? {
        StepResult::Done => Ok(()),
        _ => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("the catalog stayed locked during its snapshot".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_history_and_the_instance_id_come_back_from_a_snapshot_once() {
        let dir = tempfile::tempdir().unwrap();
        let live = Catalog::open(&dir.path().join("catalog.sqlite")).unwrap();
        let instance = live.instance_id().unwrap();
        let (_, done) = live
            .job_create("backup", "{}", &[("vm-1".into(), "web".into())], 10)
            .unwrap();
        live.run_log(done, 11, "info", "backing up 1 VM(s)")
            .unwrap();
        live.run_end(done, None, 12).unwrap();
        let (_, open) = live
            .job_create("backup", "{}", &[("vm-2".into(), "db".into())], 20)
            .unwrap();
        let snap = dir.path().join("snapshot.sqlite");
        live.snapshot_to(&snap).unwrap();

        let fresh = Catalog::open(&dir.path().join("rebuilt.sqlite")).unwrap();
        assert_ne!(fresh.instance_id().unwrap(), instance);
        let history = fresh.import_job_history(&snap).unwrap().unwrap();
        assert_eq!(fresh.instance_id().unwrap(), instance, "the same A3 again");
        assert_eq!(
            history,
            JobHistory {
                jobs: 2,
                runs: 2,
                log_lines: 1,
                runs_unfinished: 1
            }
        );
        assert_eq!(fresh.run_get(done).unwrap().unwrap().state, "succeeded");
        let open = fresh.run_get(open).unwrap().unwrap();
        assert_eq!(open.state, "failed");
        assert!(open.reason.unwrap().contains("rebuilt"));
        assert_eq!(fresh.run_log_lines(done).unwrap().len(), 1);
        // Once it has jobs, a catalog keeps its own history.
        assert_eq!(fresh.import_job_history(&snap).unwrap(), None);
        // New jobs number on from the imported ones.
        let (job, _) = fresh.job_create("restore", "{}", &[], 30).unwrap();
        assert_eq!(job, 3);
    }
}
