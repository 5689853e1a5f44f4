//! The jobs' error: a step of a backup, restore, diag or recovery that failed, with what the
//! step was doing. It ends as the run's reason in the catalog and the job log.

use std::fmt::Display;

use crate::catalog::CatalogError;
use crate::dataport::DispatchError;
use crate::dataport::storage::StorageError;
use crate::fleet::FleetError;
use crate::fleet::template::TemplateError;
use crate::inventory::InventoryError;
use crate::sr::SrError;
use crate::store::StoreError;
use crate::xapi::XapiError;

/// A job step's failure.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A condition the job cannot go on with; the message names it and the fix.
    #[error("{0}")]
    Refused(String),
    /// A step failed: what it was doing, then why.
    #[error("{what}: {source}")]
    Step {
        /// What the step was doing.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<JobError>,
    },
    /// A pool's XAPI.
    #[error(transparent)]
    Xapi(#[from] XapiError),
    /// Reaching a pool.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The ABD fleet.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// A pool's `Alike_SR` (boxed: it is the largest).
    #[error(transparent)]
    Sr(Box<SrError>),
    /// The ABD template.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data path's store side.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data path: an ABD's job.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// A disk write over HTTP. Its causes are part of the message: reqwest's own says
    /// only "error sending request", and the cause may be the body's (a corrupt chunk).
    #[error("{}", chain(.0))]
    Http(#[from] reqwest::Error),
    /// A version's metadata.
    #[error("the version's metadata: {0}")]
    Metadata(#[from] serde_json::Error),
    /// A blocking task of the job panicked or was cancelled.
    #[error("an internal task of the job: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<SrError> for JobError {
    fn from(e: SrError) -> JobError {
        JobError::Sr(Box::new(e))
    }
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// A job step's result.
pub type JobResult<T> = Result<T, JobError>;

/// Says what a step was doing when it failed, or why a missing value stops the job.
pub trait Context<T> {
    /// The failure, as part of `what`.
    fn context(self, what: impl Display) -> JobResult<T>;
    /// [`Context::context`], the description made only on failure.
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> JobResult<T>;
}

impl<T, E: Into<JobError>> Context<T> for Result<T, E> {
    fn context(self, what: impl Display) -> JobResult<T> {
        self.map_err(|e| JobError::Step {
            what: what.to_string(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> JobResult<T> {
        self.map_err(|e| JobError::Step {
            what: what().to_string(),
            source: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> JobResult<T> {
        self.ok_or_else(|| JobError::Refused(what.to_string()))
    }

    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> JobResult<T> {
        self.ok_or_else(|| JobError::Refused(what().to_string()))
    }
}

/// Ends the step with [`JobError::Refused`] and the formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::jobs::error::JobError::Refused(format!($($arg)*)))
    };
}
pub(crate) use bail;
