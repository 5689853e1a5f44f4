//! Which A3, and which of its runs, made an object in a pool.
//!
//! Every snapshot, VBD, VM and VDI the A3 creates for a run carries
//! `other_config:a3_run=<instance>/<run>` ([`RunTag`]). The instance id is random per state
//! dir (`catalog::instance`), and run numbers restart with a fresh catalog, so the pair is
//! what names an object's owner: recovery and the reconciler touch an object only when its
//! tag carries their own instance. A tag of another A3 on the same pool, of an earlier A3
//! of this machine, or of the bare `<run>` form older A3s wrote, is never theirs.

use super::ops::{self, Record};

/// The `other_config` key of the tag.
pub const RUN_KEY: &str = "a3_run";
/// The `other_config` key marking an in-place restore's safety snapshot, whose value is
/// the run's tag. Such a snapshot carries no [`RUN_KEY`]: it may hold the only copy of the
/// disks from before the restore, so it is never taken for a run's leftover.
pub const SAFETY_KEY: &str = "a3_restore_safety";
/// How the `blocked_operations` reasons an in-place restore sets begin; the run's tag
/// follows.
const BLOCK_PREFIX: &str = "A3 restore ";

/// The owner of an object: an A3 instance and one of its runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunTag {
    /// The A3's instance id.
    pub instance: String,
    /// The run.
    pub run: i64,
}

impl RunTag {
    /// The tag of `run` of `instance`.
    pub fn new(instance: &str, run: i64) -> RunTag {
        RunTag {
            instance: instance.to_owned(),
            run,
        }
    }

    /// The value stored under [`RUN_KEY`].
    pub fn value(&self) -> String {
        format!("{}/{}", self.instance, self.run)
    }

    /// The tag a value names; `None` for anything else, the bare `<run>` form included.
    pub fn parse(value: &str) -> Option<RunTag> {
        let (instance, run) = value.split_once('/')?;
        let hex = !instance.is_empty() && instance.bytes().all(|b| b.is_ascii_hexdigit());
        Some(RunTag::new(instance, run.parse().ok().filter(|_| hex)?))
    }

    /// The tag of a record, from its `other_config`.
    pub fn of(rec: &Record) -> Option<RunTag> {
        ops::map_key(rec, "other_config", RUN_KEY).and_then(RunTag::parse)
    }

    /// The tag of a VM record; a snapshot without one is read by its name
    /// ([`RunTag::snapshot_name`]).
    pub fn of_vm(rec: &Record) -> Option<RunTag> {
        RunTag::of(rec).or_else(|| {
            ops::flag(rec, "is_a_snapshot")
                .then(|| RunTag::from_snapshot_name(ops::text(rec, "name_label")))
                .flatten()
        })
    }

    /// `other_config` entries of a new object made by this run.
    pub fn other_config(&self) -> Vec<(String, String)> {
        vec![(RUN_KEY.to_owned(), self.value())]
    }

    /// The name of the snapshot this run takes of `vm_name`. The tag is added right after
    /// `VM.snapshot`; a crash in between leaves the name, which
    /// [`RunTag::from_snapshot_name`] reads.
    pub fn snapshot_name(&self, vm_name: &str) -> String {
        format!("{vm_name} a3-{}-run-{}", self.instance, self.run)
    }

    /// The name of the safety snapshot an in-place restore of this run takes of `vm_name`.
    /// Unlike [`RunTag::snapshot_name`], it is not a backup's: nothing removes it unseen.
    pub fn safety_snapshot_name(&self, vm_name: &str) -> String {
        format!("{vm_name} (before A3 restore {})", self.value())
    }

    /// The tag a [`RunTag::safety_snapshot_name`] carries.
    pub fn from_safety_snapshot_name(name: &str) -> Option<RunTag> {
        let (_, rest) = name.rsplit_once(" (before A3 restore ")?;
        RunTag::parse(rest.strip_suffix(')')?)
    }

    /// The `blocked_operations` reason while this run writes over a VM's disks, as
    /// XenCenter and `xe` show it to whoever tries to start the VM.
    pub fn block_writing(&self) -> String {
        format!(
            "{BLOCK_PREFIX}{}: the A3 is writing this VM's disks; wait for the restore to end",
            self.value()
        )
    }

    /// The reason once this run ended and left the disks in doubt: `why` says what
    /// happened and what to do.
    pub fn block_left(&self, why: &str) -> String {
        format!("{BLOCK_PREFIX}{} {why}", self.value())
    }

    /// The tag of a reason an in-place restore set ([`RunTag::block_writing`],
    /// [`RunTag::block_left`]).
    pub fn from_block(reason: &str) -> Option<RunTag> {
        let rest = reason.strip_prefix(BLOCK_PREFIX)?;
        RunTag::parse(rest.split([' ', ':']).next()?)
    }

    /// The tag a [`RunTag::snapshot_name`] carries.
    pub fn from_snapshot_name(name: &str) -> Option<RunTag> {
        let (_, suffix) = name.rsplit_once(" a3-")?;
        let (instance, run) = suffix.split_once("-run-")?;
        RunTag::parse(&format!("{instance}/{run}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_foreign_forms_are_not_tags() {
        let t = RunTag::new("00ff12ab34cd56ef", 42);
        assert_eq!(t.value(), "00ff12ab34cd56ef/42");
        assert_eq!(RunTag::parse(&t.value()), Some(t.clone()));
        for foreign in ["42", "/42", "zz/42", "00ff/x", "00ff/", ""] {
            assert_eq!(RunTag::parse(foreign), None, "{foreign:?}");
        }
        let name = t.snapshot_name("web a3-server");
        assert_eq!(RunTag::from_snapshot_name(&name), Some(t.clone()));
        let safety = t.safety_snapshot_name("web a3-x");
        assert_eq!(RunTag::from_safety_snapshot_name(&safety), Some(t.clone()));
        assert_eq!(
            RunTag::from_snapshot_name(&safety),
            None,
            "a safety snapshot is not a backup's"
        );
        for reason in [t.block_writing(), t.block_left("failed: revert")] {
            assert_eq!(RunTag::from_block(&reason), Some(t.clone()), "{reason}");
        }
        assert_eq!(RunTag::from_block("maintenance: ask Bob"), None);
        for other in [
            "web",
            "web a3-run-42",
            "web a3-xyz-run-42",
            "web a3-00ff-run-",
        ] {
            assert_eq!(RunTag::from_snapshot_name(other), None, "{other:?}");
        }
    }
}
