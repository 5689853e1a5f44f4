//! A run's log: each step with a timestamp, in the catalog (so `job log` shows it after a
//! restart) and in the A3's own log.

use super::Catalog;

/// The log of one run.
#[derive(Clone)]
pub struct RunLog {
    catalog: Catalog,
    run: i64,
}

impl RunLog {
    /// The log of `run`.
    pub fn new(catalog: Catalog, run: i64) -> RunLog {
        RunLog { catalog, run }
    }

    /// The run.
    pub fn run(&self) -> i64 {
        self.run
    }

    /// A step.
    pub fn info(&self, message: &str) {
        tracing::info!(run = self.run, "{message}");
        self.write("info", message);
    }

    /// Something the user should know (e.g. why an incremental reads the whole disk).
    pub fn warn(&self, message: &str) {
        tracing::warn!(run = self.run, "{message}");
        self.write("warn", message);
    }

    /// A failure.
    pub fn error(&self, message: &str) {
        tracing::error!(run = self.run, "{message}");
        self.write("error", message);
    }

    fn write(&self, level: &str, message: &str) {
        if let Err(e) =
            self.catalog
                .run_log(self.run, crate::util::clock::unix_now_ms(), level, message)
        {
            tracing::error!(run = self.run, "cannot write the run's log: {e}");
        }
    }
}
