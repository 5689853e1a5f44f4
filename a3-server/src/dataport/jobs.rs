//! Data-path jobs (backups and restores of one disk) as the A3 tracks them: which ABD runs
//! them, how far they are, how they ended. In memory: a job lives as long as the process
//! and its connection, and a restart fails it (no version is ever committed by a job the
//! A3 did not see finish).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use a3_shared::proto::Progress;
use serde::{Deserialize, Serialize};

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum JobState {
    /// Assigned to the agent and running.
    Running,
    /// The agent finished; the A3 is committing (backup) or checking (restore).
    Finishing,
    /// Done. For a backup, `version` is the committed version.
    Succeeded {
        /// The version committed (backup) or restored (restore).
        version: String,
    },
    /// Failed; nothing was committed.
    Failed {
        /// What went wrong, naming the thing and the fix.
        reason: String,
    },
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_final(&self) -> bool {
        matches!(self, JobState::Succeeded { .. } | JobState::Failed { .. })
    }
}

/// What the API shows of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job id.
    pub id: u64,
    /// `backup` or `restore`.
    pub kind: String,
    /// The ABD running it.
    pub abd: String,
    /// The disk name.
    pub disk: String,
    /// The device or file on the ABD.
    pub path: String,
    /// Bytes of the disk dealt with.
    pub done: u64,
    /// Bytes of the disk in all (0 until the agent knows).
    pub total: u64,
    /// Encoded chunk bytes moved.
    pub sent: u64,
    /// Where it is.
    #[serde(flatten)]
    pub state: JobState,
}

/// The registry of data-path jobs.
#[derive(Clone, Default)]
pub struct Jobs {
    inner: Arc<Mutex<JobsInner>>,
}

#[derive(Default)]
struct JobsInner {
    next: u64,
    jobs: HashMap<u64, JobStatus>,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new running job and returns its id.
    pub fn create(&self, kind: &str, abd: &str, disk: &str, path: &str) -> u64 {
        let mut inner = self.lock();
        inner.next += 1;
        let id = inner.next;
        inner.jobs.insert(
            id,
            JobStatus {
                id,
                kind: kind.to_owned(),
                abd: abd.to_owned(),
                disk: disk.to_owned(),
                path: path.to_owned(),
                done: 0,
                total: 0,
                sent: 0,
                state: JobState::Running,
            },
        );
        id
    }

    /// A job's status.
    pub fn get(&self, id: u64) -> Option<JobStatus> {
        self.lock().jobs.get(&id).cloned()
    }

    /// Every job, newest first.
    pub fn list(&self) -> Vec<JobStatus> {
        let mut all: Vec<_> = self.lock().jobs.values().cloned().collect();
        all.sort_by_key(|j| std::cmp::Reverse(j.id));
        all
    }

    /// Records the agent's progress report (ignored once the job ended). Returns whether
    /// the running job moved on since the last one: the agent reports every quarter
    /// second, moving or stuck.
    pub fn progress(&self, abd: &str, p: &Progress) -> bool {
        let mut inner = self.lock();
        let Some(j) = inner.jobs.get_mut(&p.job) else {
            return false;
        };
        if j.abd != abd || j.state.is_final() {
            return false;
        }
        let moved = j.state == JobState::Running && (p.done > j.done || p.sent > j.sent);
        j.done = p.done;
        j.total = p.total;
        j.sent = p.sent;
        moved
    }

    /// Moves a running job to `state`; a job that already ended keeps its first ending.
    /// Returns whether the state changed.
    pub fn set(&self, id: u64, state: JobState) -> bool {
        let mut inner = self.lock();
        match inner.jobs.get_mut(&id) {
            Some(j) if !j.state.is_final() => {
                if let JobState::Succeeded { .. } = state {
                    j.done = j.total;
                }
                j.state = state;
                true
            }
            _ => false,
        }
    }

    /// The jobs of `abd` still waiting for its agent (not those it finished, which the A3
    /// is committing).
    pub fn running_of(&self, abd: &str) -> Vec<u64> {
        self.lock()
            .jobs
            .values()
            .filter(|j| j.abd == abd && j.state == JobState::Running)
            .map(|j| j.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ending_wins() {
        let jobs = Jobs::default();
        let id = jobs.create("backup", "abd-1", "d", "/x");
        jobs.progress(
            "abd-2",
            &Progress {
                job: id,
                done: 5,
                total: 9,
                sent: 1,
            },
        );
        assert_eq!(
            jobs.get(id).unwrap().done,
            0,
            "another ABD cannot report for it"
        );
        jobs.progress(
            "abd-1",
            &Progress {
                job: id,
                done: 5,
                total: 9,
                sent: 1,
            },
        );
        assert_eq!(jobs.get(id).unwrap().done, 5);
        assert_eq!(jobs.running_of("abd-1"), vec![id]);
        assert!(jobs.set(
            id,
            JobState::Failed {
                reason: "gone".into()
            }
        ));
        assert!(!jobs.set(
            id,
            JobState::Succeeded {
                version: "v".into()
            }
        ));
        assert!(matches!(
            jobs.get(id).unwrap().state,
            JobState::Failed { .. }
        ));
    }

    /// Only a running job whose agent read or sent more counts as moving on (its lease is
    /// renewed then); the agent's reports of a stuck job do not.
    #[test]
    fn progress_says_whether_a_running_job_moved_on() {
        let jobs = Jobs::default();
        let id = jobs.create("backup", "abd-1", "d", "/x");
        let report = |done, sent| Progress {
            job: id,
            done,
            total: 9,
            sent,
        };
        assert!(jobs.progress("abd-1", &report(4, 0)));
        assert!(!jobs.progress("abd-1", &report(4, 0)), "stuck");
        assert!(jobs.progress("abd-1", &report(4, 1)), "sent more");
        assert!(!jobs.progress("abd-2", &report(8, 2)), "another ABD");
        jobs.set(id, JobState::Finishing);
        assert!(!jobs.progress("abd-1", &report(9, 3)), "committing");
    }
}
