//! The restore pipeline: the A3 pushes each stream its stripes of blocks, in order, as
//! chunks and runs of zero blocks. The agent keeps O(1) state per stream ([`Coverage`]): it
//! refuses a gap, a repeat, a block out of order or past the end, naming the offset. Every
//! chunk is decoded and checked against its id before a single byte is written. Zero
//! blocks are never written to a file (it is recreated sparse) and written as zeros to a
//! block device. Any failure stops the restore and says which offsets were not written;
//! wrong data is never written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use a3_shared::proto::{Coverage, DataDown, Geometry, MAX_FRAME_LEN, RestoreJob, WireId};
use anyhow::{Context, bail};

use crate::jobs::Counters;
use crate::link::{Link, RecvStream};
use crate::{blocks, device, wire};

/// Parallel streams for a restore.
const STREAMS: u32 = 3;

/// The largest zero buffer a block device's zero runs are written from.
const ZERO_WRITE: usize = 1 << 20;

/// Runs one restore job.
pub async fn run(link: Link, job: RestoreJob, c: Arc<Counters>) -> anyhow::Result<()> {
    let g = job.geometry;
    if !g.is_valid() {
        bail!(
            "{}: the A3 sent a disk of {} bytes in {}-byte blocks, which is not a disk",
            job.label,
            g.size,
            g.block_size
        );
    }
    let path = device::resolve(&job.target).await?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("restore target {}: cannot open", path.display()))?;
    let block_dev = device::is_block_device(&file);
    if block_dev {
        let len = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0))?;
        if len < g.size {
            bail!(
                "restore target {}: {len} bytes, smaller than the disk ({} bytes)",
                path.display(),
                g.size
            );
        }
    } else {
        // A regular file is recreated sparse: zero blocks stay holes.
        file.set_len(0)?;
        file.set_len(g.size)?;
    }
    c.total.store(g.size, Ordering::Relaxed);
    let file = Arc::new(file);
    let failed = Arc::new(AtomicBool::new(false));

    let mut workers = Vec::new();
    for stream in 0..STREAMS {
        let (mut send, recv) = wire::open_job_stream(&link, job.job, stream, STREAMS, 0).await?;
        wire::finish(&mut send).await;
        workers.push(tokio::spawn(receive(
            recv,
            Coverage::new(stream, STREAMS, g),
            g,
            file.clone(),
            c.clone(),
            failed.clone(),
            block_dev,
            job.label.clone(),
        )));
    }
    let mut first_err = None;
    for w in workers {
        if let Err(e) = w.await.context("restore stream")? {
            failed.store(true, Ordering::Relaxed);
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e.context(format!(
            "restore of {} to {} is INCOMPLETE: blocks not yet written hold zeros or old \
             data; do not use the target",
            job.label,
            path.display()
        )));
    }
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.sync_all())
        .await?
        .with_context(|| format!("restore target {}: fsync", path.display()))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    mut recv: RecvStream,
    mut cover: Coverage,
    g: Geometry,
    file: Arc<File>,
    c: Arc<Counters>,
    failed: Arc<AtomicBool>,
    block_dev: bool,
    label: String,
) -> anyhow::Result<()> {
    // Chunks are decoded and written a group at a time (about 1 MiB of plaintext per trip
    // to the blocking pool, as for backup compression).
    let mut group: Vec<(u64, WireId, Vec<u8>)> = Vec::new();
    let mut group_bytes = 0usize;
    loop {
        if failed.load(Ordering::Relaxed) {
            bail!("another restore stream failed");
        }
        let msg = wire::recv::<DataDown>(&mut recv, MAX_FRAME_LEN).await?;
        let end = match msg {
            Some(DataDown::Chunk { index, id, data }) => {
                cover
                    .chunk(index)
                    .with_context(|| format!("{label}: nothing written for that block"))?;
                Counters::add(&c.chunks, 1);
                Counters::add(&c.chunk_bytes, data.len() as u64);
                group_bytes += g.block_size as usize;
                group.push((index, id, data));
                false
            }
            Some(DataDown::Zeros { first, count }) => {
                let ords = cover
                    .zeros(first, count)
                    .with_context(|| format!("{label}: nothing written for that run"))?;
                let stripes = *cover.stripes();
                let bytes: u64 = stripes
                    .block_ranges(ords.clone())
                    .map(|r| g.bytes_of(r))
                    .sum();
                // A block device needs the zeros written: blocking I/O, on the blocking
                // pool so that the runtime keeps serving the connection (in the 2-core
                // appliance, streams writing zeros on the async workers starved QUIC until
                // the A3 timed the connection out). A file is sparse: nothing to write.
                if block_dev {
                    let f = file.clone();
                    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                        let zeros = vec![0u8; ZERO_WRITE.min(bytes as usize)];
                        for blocks in stripes.block_ranges(ords) {
                            let (mut at, end) = (
                                g.block_range(blocks.start).start,
                                g.block_range(blocks.end - 1).end,
                            );
                            while at < end {
                                let n = (end - at).min(zeros.len() as u64) as usize;
                                f.write_all_at(&zeros[..n], at)?;
                                at += n as u64;
                            }
                        }
                        Ok(())
                    })
                    .await?
                    .with_context(|| format!("{label}: writing zeros from block {first}"))?;
                }
                Counters::add(&c.zero_blocks, count);
                Counters::add(&c.done, bytes);
                false
            }
            Some(DataDown::End) => true,
            Some(DataDown::Error { reason }) => bail!("{reason}"),
            Some(other) => bail!("unexpected message on a restore stream: {other:?}"),
            None => bail!("the A3 closed a restore stream early"),
        };
        if !group.is_empty() && (end || group_bytes >= 1 << 20) {
            let chunks = std::mem::take(&mut group);
            group_bytes = 0;
            let (f, label2) = (file.clone(), label.clone());
            let written =
                tokio::task::spawn_blocking(move || write_group(&f, g, &label2, chunks)).await??;
            Counters::add(&c.bytes_io, written);
            Counters::add(&c.done, written);
        }
        if end {
            break;
        }
    }
    cover.finish().with_context(|| label.clone())?;
    Ok(())
}

/// Decodes each chunk, checks it against its id and length, and writes it. Stops at the
/// first bad chunk, having written nothing of it. Returns the bytes written.
fn write_group(
    f: &File,
    g: Geometry,
    label: &str,
    chunks: Vec<(u64, WireId, Vec<u8>)>,
) -> anyhow::Result<u64> {
    let mut written = 0;
    for (index, id, data) in chunks {
        let r = g.block_range(index);
        let len = (r.end - r.start) as usize;
        let plain = blocks::decode(&data, &id).with_context(|| {
            format!(
                "{label}: block at offset {}: chunk rejected, not written",
                r.start
            )
        })?;
        if plain.len() != len {
            bail!(
                "{label}: block at offset {}: {} bytes, expected {len}; not written",
                r.start,
                plain.len()
            );
        }
        f.write_all_at(&plain, r.start)
            .with_context(|| format!("writing offset {}", r.start))?;
        written += len as u64;
    }
    Ok(written)
}
