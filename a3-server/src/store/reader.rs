//! Reading chunks back: every read decodes the chunk and checks its plaintext against its
//! id, so the store never hands out wrong bytes. A chunk that fails is quarantined on the
//! spot, so no later backup dedups against it.

use a3_shared::chunk::{self, BlockId};

use super::{Space, Store, StoreError};

/// What a stored chunk turned out to be.
pub(crate) enum Checked {
    /// Whole; its encoded bytes and plaintext.
    Good {
        /// The chunk as stored.
        encoded: Vec<u8>,
        /// Its plaintext.
        plain: Vec<u8>,
    },
    /// Not in the store.
    Missing,
    /// Damaged: why, and where it was moved.
    Quarantined {
        /// What is wrong.
        reason: String,
        /// The quarantine path.
        to: String,
    },
}

impl Store {
    /// The encoded chunk `id`, checked against its id (for sending to an agent).
    pub fn read_chunk(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        self.read(id).map(|(encoded, _)| encoded)
    }

    /// The plaintext of block `id`, checked against its id.
    pub fn read_block(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        self.read(id).map(|(_, plain)| plain)
    }

    fn read(&self, id: &BlockId) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        match self.check_chunk(id)? {
            Checked::Good { encoded, plain } => Ok((encoded, plain)),
            Checked::Missing => Err(StoreError::Missing {
                store: self.location().to_owned(),
                chunk: *id,
            }),
            Checked::Quarantined { reason, to } => Err(StoreError::Corrupt {
                store: self.location().to_owned(),
                chunk: *id,
                reason,
                quarantined: to,
            }),
        }
    }

    /// Reads and checks one chunk, quarantining it if it is damaged. An I/O error is not
    /// damage: it is returned, and the chunk stays.
    pub(crate) fn check_chunk(&self, id: &BlockId) -> Result<Checked, StoreError> {
        let backend = &self.inner.backend;
        let read = |what: &str| match backend.get(Space::Chunks, id) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(|| format!("{what} chunk {id}"), e)),
        };
        let Some(encoded) = read("reading")? else {
            return Ok(Checked::Missing);
        };
        if let Ok(plain) = chunk::decode(id, &encoded) {
            return Ok(Checked::Good { encoded, plain });
        }
        // Re-check under the chunk's lock: a session may have just replaced the damaged
        // file with a good upload, which must not be quarantined.
        let _g = self.stripe(id);
        let Some(encoded) = read("re-reading")? else {
            return Ok(Checked::Missing);
        };
        match chunk::decode(id, &encoded) {
            Ok(plain) => Ok(Checked::Good { encoded, plain }),
            Err(e) => {
                let to = backend
                    .quarantine(Space::Chunks, id)
                    .map_err(|e| self.io(|| format!("quarantining chunk {id}"), e))?;
                tracing::error!(chunk = %id, %to, "corrupt chunk quarantined: {e}");
                Ok(Checked::Quarantined {
                    reason: e.to_string(),
                    to,
                })
            }
        }
    }
}
