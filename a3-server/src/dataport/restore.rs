//! The A3's half of a restore: each data stream gets its stripes of blocks, in order:
//! chunks read from the store (which verifies every chunk) a few ahead of the network, and
//! runs of zero blocks. The manifest is streamed from the store, never loaded whole, so a
//! restore of any disk size costs the A3 a few megabytes per stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use a3_shared::proto::{DataDown, Geometry, RestoreItem, restore_items};
use futures::StreamExt;

use super::StreamError;
use super::storage::{StorageError, StoreHandle};
use super::wire;
use crate::store::VersionId;

/// Chunks read ahead per stream.
const READ_AHEAD: usize = 4;

/// Items a stream's manifest reader runs ahead of its sender.
const ITEMS_AHEAD: usize = 256;

/// One running restore job.
pub struct RestoreWork {
    /// The job.
    pub job: u64,
    /// The ABD running it.
    pub abd: String,
    /// "version V disk D", for messages.
    pub label: String,
    version: VersionId,
    disk: String,
    geometry: Geometry,
    store: StoreHandle,
    streams_served: AtomicU32,
    streams_expected: AtomicU32,
}

impl RestoreWork {
    /// A job about to be assigned: `version`'s disk `disk`, of `geometry`.
    pub fn new(
        job: u64,
        abd: String,
        label: String,
        version: VersionId,
        disk: String,
        geometry: Geometry,
        store: StoreHandle,
    ) -> RestoreWork {
        RestoreWork {
            job,
            abd,
            label,
            version,
            disk,
            geometry,
            store,
            streams_served: AtomicU32::new(0),
            streams_expected: AtomicU32::new(0),
        }
    }

    /// Sends stream `stream` of `streams` its blocks, in order, then End.
    pub async fn serve_stream(
        self: Arc<Self>,
        stream: u32,
        streams: u32,
        send: &mut wire::SendStream,
    ) -> Result<(), StreamError> {
        if streams == 0 || streams > 64 || stream >= streams {
            return Err(StreamError::Protocol(format!(
                "bad restore stream {stream} of {streams}"
            )));
        }
        let prev = self.streams_expected.swap(streams, Ordering::SeqCst);
        if prev != 0 && prev != streams {
            return Err(StreamError::Protocol(
                "restore streams disagree on their count".into(),
            ));
        }
        let manifest = self
            .store
            .open_manifest(self.version, &self.disk)
            .await
            .map_err(|e| StreamError::from(e).during(self.label.clone()))?;
        if manifest.geometry() != self.geometry {
            return Err(StreamError::Protocol(format!(
                "{}: the manifest changed since the job started",
                self.label
            )));
        }
        // The manifest's reads block: a blocking task turns it into this stream's items.
        let (tx, rx) = tokio::sync::mpsc::channel(ITEMS_AHEAD);
        let lister = tokio::task::spawn_blocking(move || {
            let entries = manifest.map(|e| e.map(|(i, b)| (i, b.map(|id| id.0))));
            for item in restore_items(stream, streams, entries) {
                if tx.blocking_send(item).is_err() {
                    break; // the sender stopped
                }
            }
        });
        let items =
            futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|i| (i, rx)) });
        let store = self.store.clone();
        let bs = u64::from(self.geometry.block_size);
        let label = self.label.clone();
        let mut msgs = items
            .map(|item| {
                let (store, label) = (store.clone(), label.clone());
                async move {
                    match item.map_err(StorageError::from)? {
                        RestoreItem::Zeros { first, count } => Ok(DataDown::Zeros { first, count }),
                        RestoreItem::Chunk { index, id } => {
                            let data = store.read_chunk(id).await.map_err(|e| {
                                StreamError::from(e)
                                    .during(format!("{label}: block at offset {}", index * bs))
                            })?;
                            Ok(DataDown::Chunk { index, id, data })
                        }
                    }
                }
            })
            .buffered(READ_AHEAD)
            .boxed();
        let ctx = |e: wire::WireError| {
            StreamError::Link(format!("{}: {}", self.label, e.describe(&self.abd)))
        };
        while let Some(msg) = msgs.next().await {
            let msg: DataDown = msg.map_err(|e: StreamError| e.during(self.label.clone()))?;
            wire::send(send, &msg).await.map_err(ctx)?;
        }
        drop(msgs);
        lister.await.map_err(StorageError::from)?;
        wire::send(send, &DataDown::End).await.map_err(ctx)?;
        self.streams_served.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The agent says it is done: check every stream was served whole.
    pub fn check_served(&self) -> Result<String, StreamError> {
        let expected = self.streams_expected.load(Ordering::SeqCst);
        let served = self.streams_served.load(Ordering::SeqCst);
        if expected == 0 || served != expected {
            return Err(StreamError::Protocol(format!(
                "{}: the agent reported success but only {served} of {expected} streams were served",
                self.label
            )));
        }
        Ok(self.version.to_string())
    }
}
