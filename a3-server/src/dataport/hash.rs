//! Hash jobs: the agent reads a whole device and answers its BLAKE3 digest. The ABD diag
//! job uses one on a small test disk of known content; nothing touches the store.

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::DispatchError;

/// What the agent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHash {
    /// The job id.
    pub job: u64,
    /// The device's size in bytes.
    pub size: u64,
    /// BLAKE3-256 of its bytes.
    pub digest: [u8; 32],
    /// How long the agent took to read it, in microseconds.
    pub micros: u64,
}

/// A running hash job: where its answer goes.
pub struct HashWork {
    /// The ABD running it.
    pub abd: String,
    answer: Mutex<Option<oneshot::Sender<Result<DeviceHash, DispatchError>>>>,
}

impl HashWork {
    /// A job whose answer goes to `answer`.
    pub fn new(
        abd: String,
        answer: oneshot::Sender<Result<DeviceHash, DispatchError>>,
    ) -> HashWork {
        HashWork {
            abd,
            answer: Mutex::new(Some(answer)),
        }
    }

    /// Delivers the outcome (the first one only).
    pub fn finish(&self, outcome: Result<DeviceHash, DispatchError>) {
        let tx = self.answer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(outcome);
        }
    }
}
