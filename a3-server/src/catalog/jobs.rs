//! Pool jobs (whole-VM backups and restores): the job as asked, each run of it, each VM
//! of a run, and the run's log.
//!
//! A run is `running` until it ends `succeeded` or `failed` with a reason. A run still
//! `running` when the A3 starts was interrupted by a crash: recovery cleans up what it left
//! in the pools and marks it failed ([`Catalog::run_fail_interrupted`]). Progress (bytes) is
//! kept in memory while a run goes; the catalog holds what must survive a crash.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};

/// The tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs(job, id);
CREATE TABLE IF NOT EXISTS run_items (
    run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    label TEXT NOT NULL,
    state TEXT NOT NULL,
    abd TEXT,
    version INTEGER,
    reason TEXT,
    PRIMARY KEY (run, subject)
);
CREATE TABLE IF NOT EXISTS run_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    at_ms INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_log_by_run ON run_log(run, id);
CREATE TABLE IF NOT EXISTS run_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    abd TEXT NOT NULL,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    remedy TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_checks_by_run ON run_checks(run, id);
";

/// A job as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    /// The id.
    pub id: i64,
    /// `backup` or `restore`.
    pub kind: String,
    /// What was asked (JSON), e.g. the VMs and the concurrency.
    pub spec: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRow {
    /// The run id.
    pub id: i64,
    /// Its job.
    pub job: i64,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds, once ended.
    pub ended_at: Option<i64>,
    /// Why it failed.
    pub reason: Option<String>,
}

/// One VM of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunItemRow {
    /// The VM's uuid (backup) or the version restored (restore).
    pub subject: String,
    /// The VM's name, for people.
    pub label: String,
    /// `pending`, `running`, `succeeded` or `failed`.
    pub state: String,
    /// The ABD that did it.
    pub abd: Option<String>,
    /// The version committed (backup) or restored (restore).
    pub version: Option<i64>,
    /// Why it failed.
    pub reason: Option<String>,
}

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// What happened.
    pub message: String,
}

/// One line of a diag run's results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRow {
    /// The ABD checked.
    pub abd: String,
    /// Who checked: `abd` (the agent's own diag) or `a3` (the A3's checks of the ABD).
    pub source: String,
    /// What was checked.
    pub check: String,
    /// `pass`, `warn`, `fail`, or `not used` (a port this product does not need).
    pub status: String,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when it passes).
    pub remedy: String,
}

impl Catalog {
    /// Records a diag run's results.
    pub fn run_checks_add(&self, run: i64, checks: &[CheckRow]) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        for c in checks {
            tx.execute(
                "INSERT INTO run_checks (run, abd, source, name, status, detail, remedy) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![run, c.abd, c.source, c.check, c.status, c.detail, c.remedy],
            )
            .map_err(|e| self.error(e))?;
        }
        tx.commit().map_err(|e| self.error(e))
    }

    /// A run's check results, in the order recorded.
    pub fn run_checks(&self, run: i64) -> Result<Vec<CheckRow>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT abd, source, name, status, detail, remedy FROM run_checks \
                 WHERE run = ?1 ORDER BY id",
            )
            .map_err(|e| self.error(e))?;
        stmt.query_map([run], |r| {
            Ok(CheckRow {
                abd: r.get(0)?,
                source: r.get(1)?,
                check: r.get(2)?,
                status: r.get(3)?,
                detail: r.get(4)?,
                remedy: r.get(5)?,
            })
        })
        .map_err(|e| self.error(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.error(e))
    }

    /// Records a job and starts its first run with `items` (`(subject, label)`) pending.
    /// Returns `(job, run)`.
    pub fn job_create(
        &self,
        kind: &str,
        spec: &str,
        items: &[(String, String)],
        now: i64,
    ) -> Result<(i64, i64), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        tx.execute(
            "INSERT INTO jobs (kind, spec, created_at) VALUES (?1, ?2, ?3)",
            params![kind, spec, now],
        )
        .map_err(|e| self.error(e))?;
        let job = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO runs (job, state, started_at) VALUES (?1, 'running', ?2)",
            params![job, now],
        )
        .map_err(|e| self.error(e))?;
        let run = tx.last_insert_rowid();
        for (subject, label) in items {
            tx.execute(
                "INSERT INTO run_items (run, subject, label, state) VALUES (?1, ?2, ?3, 'pending')",
                params![run, subject, label],
            )
            .map_err(|e| self.error(e))?;
        }
        tx.commit().map_err(|e| self.error(e))?;
        Ok((job, run))
    }

    /// Every job, newest first.
    pub fn job_list(&self) -> Result<Vec<JobRow>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT id, kind, spec, created_at FROM jobs ORDER BY id DESC")
            .map_err(|e| self.error(e))?;
        stmt.query_map([], job_from_row)
            .map_err(|e| self.error(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(e))
    }

    /// One job.
    pub fn job_get(&self, id: i64) -> Result<Option<JobRow>, CatalogError> {
        self.lock()
            .query_row(
                "SELECT id, kind, spec, created_at FROM jobs WHERE id = ?1",
                [id],
                job_from_row,
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    /// The runs of `job`, newest first.
    pub fn run_list(&self, job: i64) -> Result<Vec<RunRow>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, job, state, started_at, ended_at, reason FROM runs
                 WHERE job = ?1 ORDER BY id DESC",
            )
            .map_err(|e| self.error(e))?;
        stmt.query_map([job], run_from_row)
            .map_err(|e| self.error(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(e))
    }

    /// One run.
    pub fn run_get(&self, run: i64) -> Result<Option<RunRow>, CatalogError> {
        self.lock()
            .query_row(
                "SELECT id, job, state, started_at, ended_at, reason FROM runs WHERE id = ?1",
                [run],
                run_from_row,
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    /// How many runs there are of each job kind and state: `(kind, state, count)`.
    pub fn run_counts(&self) -> Result<Vec<(String, String, u64)>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT j.kind, r.state, COUNT(*) FROM runs r JOIN jobs j ON j.id = r.job
                 GROUP BY j.kind, r.state ORDER BY j.kind, r.state",
            )
            .map_err(|e| self.error(e))?;
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })
        .map_err(|e| self.error(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.error(e))
    }

    /// The runs still marked running (after a crash: the interrupted ones).
    pub fn runs_running(&self) -> Result<Vec<RunRow>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, job, state, started_at, ended_at, reason FROM runs
                 WHERE state = 'running' ORDER BY id",
            )
            .map_err(|e| self.error(e))?;
        stmt.query_map([], run_from_row)
            .map_err(|e| self.error(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(e))
    }

    /// Ends a running run. `reason` set means failed. A run that already ended keeps its
    /// first ending; returns whether this call ended it.
    pub fn run_end(&self, run: i64, reason: Option<&str>, now: i64) -> Result<bool, CatalogError> {
        let state = if reason.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        let n = self
            .lock()
            .execute(
                "UPDATE runs SET state = ?2, ended_at = ?3, reason = ?4
                 WHERE id = ?1 AND state = 'running'",
                params![run, state, now, reason],
            )
            .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    /// Fails an interrupted run and every item of it that had not ended.
    pub fn run_fail_interrupted(
        &self,
        run: i64,
        reason: &str,
        now: i64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        tx.execute(
            "UPDATE run_items SET state = 'failed', reason = ?2
             WHERE run = ?1 AND state IN ('pending', 'running')",
            params![run, reason],
        )
        .map_err(|e| self.error(e))?;
        tx.execute(
            "UPDATE runs SET state = 'failed', ended_at = ?3, reason = ?2
             WHERE id = ?1 AND state = 'running'",
            params![run, reason, now],
        )
        .map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    /// The items of a run, in the order they were asked.
    pub fn run_items(&self, run: i64) -> Result<Vec<RunItemRow>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT subject, label, state, abd, version, reason FROM run_items
                 WHERE run = ?1 ORDER BY rowid",
            )
            .map_err(|e| self.error(e))?;
        stmt.query_map([run], |r| {
            Ok(RunItemRow {
                subject: r.get(0)?,
                label: r.get(1)?,
                state: r.get(2)?,
                abd: r.get(3)?,
                version: r.get(4)?,
                reason: r.get(5)?,
            })
        })
        .map_err(|e| self.error(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.error(e))
    }

    /// Updates one item: its state, and the ABD, version and reason when given.
    pub fn run_item_set(
        &self,
        run: i64,
        subject: &str,
        state: &str,
        abd: Option<&str>,
        version: Option<i64>,
        reason: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE run_items SET state = ?3, abd = COALESCE(?4, abd),
                     version = COALESCE(?5, version), reason = COALESCE(?6, reason)
                 WHERE run = ?1 AND subject = ?2",
                params![run, subject, state, abd, version, reason],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Appends a line to a run's log.
    pub fn run_log(
        &self,
        run: i64,
        at_ms: i64,
        level: &str,
        message: &str,
    ) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "INSERT INTO run_log (run, at_ms, level, message) VALUES (?1, ?2, ?3, ?4)",
                params![run, at_ms, level, message],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// A run's log, oldest first, from line `after` (exclusive, 0 for all).
    pub fn run_log_lines(&self, run: i64) -> Result<Vec<LogLine>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT at_ms, level, message FROM run_log WHERE run = ?1 ORDER BY id")
            .map_err(|e| self.error(e))?;
        stmt.query_map([run], |r| {
            Ok(LogLine {
                at_ms: r.get(0)?,
                level: r.get(1)?,
                message: r.get(2)?,
            })
        })
        .map_err(|e| self.error(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.error(e))
    }
}

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        spec: r.get(2)?,
        created_at: r.get(3)?,
    })
}

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        job: r.get(1)?,
        state: r.get(2)?,
        started_at: r.get(3)?,
        ended_at: r.get(4)?,
        reason: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_ends_once_and_interrupted_runs_fail_with_their_items() {
        let c = Catalog::in_memory().unwrap();
        let items = vec![
            ("u1".to_owned(), "web".to_owned()),
            ("u2".into(), "db".into()),
        ];
        let (job, run) = c.job_create("backup", "{}", &items, 10).unwrap();
        assert_eq!(c.job_get(job).unwrap().unwrap().kind, "backup");
        c.run_item_set(run, "u1", "succeeded", Some("abd-1"), Some(7), None)
            .unwrap();
        c.run_item_set(run, "u2", "running", Some("abd-2"), None, None)
            .unwrap();
        c.run_log(run, 1000, "info", "snapshot taken").unwrap();
        assert_eq!(c.runs_running().unwrap().len(), 1);
        c.run_fail_interrupted(run, "the A3 stopped", 20).unwrap();
        let r = c.run_get(run).unwrap().unwrap();
        assert_eq!((r.state.as_str(), r.ended_at), ("failed", Some(20)));
        let it = c.run_items(run).unwrap();
        assert_eq!(it[0].state, "succeeded");
        assert_eq!(it[0].version, Some(7));
        assert_eq!(
            (it[1].state.as_str(), it[1].reason.as_deref()),
            ("failed", Some("the A3 stopped"))
        );
        assert!(!c.run_end(run, None, 30).unwrap(), "first ending wins");
        assert!(c.runs_running().unwrap().is_empty());
        assert_eq!(c.run_log_lines(run).unwrap()[0].message, "snapshot taken");
        assert_eq!(c.run_list(job).unwrap().len(), 1);
        assert_eq!(c.job_list().unwrap().len(), 1);
    }
}
