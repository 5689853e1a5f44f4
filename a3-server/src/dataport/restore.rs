//! The A3's half of a restore: each data stream gets its stripes of blocks, read from the
//! store (which verifies every chunk) a few ahead of the network.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use a3_shared::proto::{DataDown, Manifest, restore_stream_of};
use futures::StreamExt;

use super::StreamError;
use super::storage::StoreHandle;
use super::wire;

/// Chunks read ahead per stream.
const READ_AHEAD: usize = 4;

/// One running restore job.
pub struct RestoreWork {
    /// The job.
    pub job: u64,
    /// The ABD running it.
    pub abd: String,
    /// The version restored.
    pub version: String,
    /// "version V disk D", for messages.
    pub label: String,
    manifest: Arc<Manifest>,
    store: StoreHandle,
    streams_served: AtomicU32,
    streams_expected: AtomicU32,
}

impl RestoreWork {
    /// A job about to be assigned.
    pub fn new(
        job: u64,
        abd: String,
        version: String,
        label: String,
        manifest: Manifest,
        store: StoreHandle,
    ) -> RestoreWork {
        RestoreWork {
            job,
            abd,
            version,
            label,
            manifest: Arc::new(manifest),
            store,
            streams_served: AtomicU32::new(0),
            streams_expected: AtomicU32::new(0),
        }
    }

    /// Sends stream `stream` of `streams` its blocks, then End.
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
        let m = self.manifest.clone();
        let mine = (0..m.blocks.len() as u64).filter_map(|i| {
            let id = m.blocks[i as usize]?;
            (restore_stream_of(i, streams) == stream).then_some((i, id))
        });
        let store = self.store.clone();
        let mut reads = futures::stream::iter(mine)
            .map(|(i, id)| {
                let store = store.clone();
                async move { (i, id, store.read_chunk(id).await) }
            })
            .buffered(READ_AHEAD);
        let ctx = |e: wire::WireError| {
            StreamError::Link(format!("{}: {}", self.label, e.describe(&self.abd)))
        };
        while let Some((index, id, data)) = reads.next().await {
            let data = data.map_err(|e| {
                StreamError::from(e).during(format!(
                    "{}: block at offset {}",
                    self.label,
                    index * u64::from(m.block_size)
                ))
            })?;
            wire::send(send, &DataDown::Chunk { index, id, data })
                .await
                .map_err(ctx)?;
        }
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
        Ok(self.version.clone())
    }
}
