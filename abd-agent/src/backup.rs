//! The backup pipeline.
//!
//! ```text
//! the plan (pages on stream 0, from the A3)
//!   ▼
//! reader thread ──batches (≤ BATCH_BYTES, consecutive planned blocks)──▶ N stream workers
//!   large aligned preads                  each: classify (zero / hash)
//!   in plan order                               → HashBatch up, Need down
//!                                               → compress the needed blocks, send them
//! ```
//!
//! The A3 plans (from the CBT bitmap and the base it keeps) and sends one bit per block;
//! the agent never holds a block list or a CBT bitmap, and the A3 decides which reported
//! ids equal the base's.
//!
//! The reader never waits on a round trip: while one worker waits for its Need answer the
//! others hash, compress and send, and the reader fills the queue. Block data lives in a
//! fixed pool of `QUEUE + STREAMS + 1` buffers of `BATCH_BYTES` that circulate between the
//! reader and the workers: memory is bounded by the pool (plus one encoded chunk per worker
//! and QUIC's send window), and reusing buffers spares the page faults and zeroing of fresh
//! megabyte allocations, which were a quarter of the agent's CPU on a re-backup (perf).

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use a3_shared::proto::{
    BackupJob, BlockBitmap, BlockRef, DataDown, DataUp, Geometry, HashBatch, MAX_BATCH_ENTRIES,
    MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, PLAN_PAGE_BYTES, PlanReceiver, WireId, need_bit,
};
use anyhow::{Context, bail};
use tokio::sync::{Mutex, mpsc};

use crate::jobs::Counters;
use crate::link::{Link, RecvStream, SendStream};
use crate::{blocks, device, wire};

/// Parallel data streams per job: enough for the two cores to stay busy while one stream
/// waits for an answer.
pub const STREAMS: u32 = 3;
/// Block data per batch.
const BATCH_BYTES: u64 = 4 << 20;
/// Plain bytes compressed per trip to the blocking pool.
const COMPRESS_GROUP_BYTES: usize = 1 << 20;
/// Batches read ahead of the workers.
const QUEUE: usize = 1;

/// Consecutive blocks read in one go.
struct RawBatch {
    first: u64,
    data: Vec<u8>,
}

/// Runs one backup job to completion.
pub async fn run(link: Link, job: BackupJob, c: Arc<Counters>) -> anyhow::Result<()> {
    let bs = job.block_size;
    let (file, size) = device::open_read(&job.device).await?;
    let g = Geometry {
        size,
        block_size: bs,
    };
    if !g.is_valid() {
        bail!(
            "block size {bs} is not a multiple of {MIN_BLOCK_SIZE} within \
             {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"
        );
    }
    c.total.store(size, std::sync::atomic::Ordering::Relaxed);
    // Every stream announces the size; the A3 answers on stream 0 with the plan.
    let mut streams = Vec::new();
    for stream in 0..STREAMS {
        streams.push(wire::open_job_stream(&link, job.job, stream, STREAMS, size).await?);
    }
    let reads = receive_plan(&mut streams[0].1, g.blocks()).await?;
    let planned_bytes: u64 = reads.runs().map(|r| g.bytes_of(r)).sum();
    Counters::add(&c.done, size - planned_bytes);

    let per_batch = (BATCH_BYTES / u64::from(bs)).clamp(1, MAX_BATCH_ENTRIES as u64);
    let (tx, rx) = mpsc::channel::<RawBatch>(QUEUE);
    let buffers = QUEUE + STREAMS as usize + 1;
    let (pool_tx, pool_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(buffers);
    for _ in 0..buffers {
        pool_tx.send(Vec::new()).expect("room for every buffer");
    }
    let file = Arc::new(file);
    let reader_file = file.clone();
    let reader_c = c.clone();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for run in reads.runs() {
            let mut first = run.start;
            while first < run.end {
                let n = per_batch.min(run.end - first);
                let start = first * u64::from(bs);
                let end = ((first + n) * u64::from(bs)).min(size);
                // Wait for a free buffer; none comes back once every worker has stopped.
                let Ok(mut data) = pool_rx.recv() else {
                    return Ok(());
                };
                data.resize((end - start) as usize, 0);
                reader_file
                    .read_exact_at(&mut data, start)
                    .with_context(|| format!("device read at offset {start}"))?;
                Counters::add(&reader_c.bytes_io, end - start);
                if tx.blocking_send(RawBatch { first, data }).is_err() {
                    return Ok(()); // the workers stopped; their error is reported
                }
                first += n;
            }
        }
        Ok(())
    });

    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for (send, recv) in streams {
        let w = Worker {
            send,
            recv,
            bs,
            size,
            c: c.clone(),
            seq: 0,
            pool: pool_tx.clone(),
        };
        workers.push(tokio::spawn(w.run(rx.clone())));
    }
    drop(pool_tx);
    let mut first_err = None;
    for w in workers {
        let r = w.await.context("data stream worker")?;
        if let Err(e) = r {
            first_err.get_or_insert(e);
            // Unblock the reader so the job ends promptly.
            rx.lock().await.close();
        }
    }
    let read = reader.await.context("device reader")?;
    if let Some(e) = first_err {
        return Err(e);
    }
    read
}

/// Receives the A3's plan on stream 0: which blocks to read, one bit per block.
async fn receive_plan(recv: &mut RecvStream, blocks: u64) -> anyhow::Result<BlockBitmap> {
    let mut plan = PlanReceiver::new(blocks);
    loop {
        match wire::recv::<DataDown>(recv, PLAN_PAGE_BYTES + 64).await? {
            Some(DataDown::Plan { first, bits, last }) => {
                if let Some(reads) = plan.page(first, &bits, last)? {
                    return Ok(reads);
                }
            }
            Some(DataDown::Error { reason }) => bail!("{reason}"),
            other => bail!("the A3 sent {other:?} instead of the backup plan"),
        }
    }
}

struct Worker {
    send: SendStream,
    recv: RecvStream,
    bs: u32,
    size: u64,
    c: Arc<Counters>,
    seq: u64,
    pool: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl Worker {
    async fn run(mut self, rx: Arc<Mutex<mpsc::Receiver<RawBatch>>>) -> anyhow::Result<()> {
        loop {
            let batch = rx.lock().await.recv().await;
            let Some(batch) = batch else { break };
            self.batch(batch).await?;
        }
        wire::send(&mut self.send, &DataUp::End).await?;
        match wire::recv::<DataDown>(&mut self.recv, 1 << 20).await? {
            Some(DataDown::End) => {}
            Some(DataDown::Error { reason }) => bail!("{reason}"),
            other => bail!("the A3 answered End with {other:?}"),
        }
        wire::finish(&mut self.send).await;
        Ok(())
    }

    async fn batch(&mut self, raw: RawBatch) -> anyhow::Result<()> {
        let (bs, size) = (self.bs, self.size);
        let first = raw.first;
        // Classify in the blocking pool: hashing is the CPU work, and the pool runs the
        // workers' batches in parallel.
        let (raw, entries) = tokio::task::spawn_blocking(move || {
            let entries: Vec<BlockRef> = raw
                .data
                .chunks(bs as usize)
                .map(|block| {
                    if blocks::is_zero(block) {
                        BlockRef::Zero
                    } else {
                        BlockRef::Hash(blocks::block_id(block))
                    }
                })
                .collect();
            (raw, entries)
        })
        .await?;
        let zeros = entries
            .iter()
            .filter(|e| matches!(e, BlockRef::Zero))
            .count();
        Counters::add(&self.c.zero_blocks, zeros as u64);
        let seq = self.seq;
        self.seq += 1;
        wire::send(
            &mut self.send,
            &DataUp::Hashes(HashBatch {
                seq,
                first,
                entries: entries.clone(),
            }),
        )
        .await?;
        let bits = match wire::recv::<DataDown>(&mut self.recv, 1 << 20).await? {
            Some(DataDown::Need { seq: s, bits }) if s == seq => bits,
            Some(DataDown::Error { reason }) => bail!("{reason}"),
            other => bail!("the A3 answered hash batch {seq} with {other:?}"),
        };
        let raw = Arc::new(raw);
        let needed: Vec<(usize, WireId)> = entries
            .iter()
            .enumerate()
            .filter_map(|(k, e)| match e {
                BlockRef::Hash(id) if need_bit(&bits, k) => Some((k, *id)),
                _ => None,
            })
            .collect();
        // Compress a group of blocks per trip to the blocking pool: one trip per block cost
        // more in thread switches than the compression of a small block (perf).
        let group = (COMPRESS_GROUP_BYTES / bs as usize).max(1);
        for part in needed.chunks(group) {
            let raw = raw.clone();
            let part = part.to_vec();
            let encoded = tokio::task::spawn_blocking(move || {
                part.into_iter()
                    .map(|(k, id)| {
                        let start = k * bs as usize;
                        let end = (start + bs as usize).min(raw.data.len());
                        Ok((id, blocks::encode(&raw.data[start..end])?))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .await??;
            for (id, data) in encoded {
                Counters::add(&self.c.chunks, 1);
                Counters::add(&self.c.chunk_bytes, data.len() as u64);
                wire::send(&mut self.send, &DataUp::Chunk { id, data }).await?;
            }
        }
        let g = Geometry {
            size,
            block_size: bs,
        };
        Counters::add(
            &self.c.done,
            g.bytes_of(first..first + entries.len() as u64),
        );
        // Every compression task has finished: the buffer is ours again, back to the pool.
        if let Ok(raw) = Arc::try_unwrap(raw) {
            let _ = self.pool.try_send(raw.data);
        }
        Ok(())
    }
}
