//! The restore pipeline: the A3 pushes each stream its stripes of blocks; every chunk is
//! decoded and checked against the id the *job's manifest* names before a single byte is
//! written. Zero blocks are never written to a file (it is recreated sparse) and written as
//! zeros to a block device. Any failure stops the restore and says which offsets were not
//! written; wrong data is never written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use a3_shared::proto::{
    DataDown, DataUp, MAX_FRAME_LEN, Manifest, RestoreJob, WireId, restore_stream_of,
};
use anyhow::{Context, bail};

use crate::jobs::Counters;
use crate::link::{Link, RecvStream};
use crate::{blocks, device, wire};

/// Parallel streams for a restore.
const STREAMS: u32 = 3;

/// Runs one restore job.
pub async fn run(link: Link, job: RestoreJob, c: Arc<Counters>) -> anyhow::Result<()> {
    let m = Arc::new(job.manifest);
    if !m.is_consistent() {
        bail!("{}: the manifest does not match its size", job.label);
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
        if len < m.size {
            bail!(
                "restore target {}: {len} bytes, smaller than the disk ({} bytes)",
                path.display(),
                m.size
            );
        }
    } else {
        // A regular file is recreated sparse: zero blocks stay holes.
        file.set_len(0)?;
        file.set_len(m.size)?;
    }
    c.total.store(m.size, Ordering::Relaxed);
    let file = Arc::new(file);
    let failed = Arc::new(AtomicBool::new(false));

    let mut workers = Vec::new();
    for stream in 0..STREAMS {
        let (mut send, recv) = link.open_data().await.context("opening a data stream")?;
        wire::send(
            &mut send,
            &DataUp::Open {
                job: job.job,
                stream,
                streams: STREAMS,
                size: 0,
            },
        )
        .await?;
        wire::finish(&mut send).await;
        workers.push(tokio::spawn(receive(
            recv,
            stream,
            m.clone(),
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
    stream: u32,
    m: Arc<Manifest>,
    file: Arc<File>,
    c: Arc<Counters>,
    failed: Arc<AtomicBool>,
    block_dev: bool,
    label: String,
) -> anyhow::Result<()> {
    let streams = STREAMS;
    let mine: Vec<u64> = (0..m.blocks.len() as u64)
        .filter(|&i| restore_stream_of(i, streams) == stream)
        .collect();
    let mut pending: std::collections::HashSet<u64> = mine
        .iter()
        .copied()
        .filter(|&i| m.blocks[i as usize].is_some())
        .collect();
    // Zero blocks first: nothing to wait for. A block device needs them written: blocking
    // I/O, done on the blocking pool so that the runtime keeps serving the connection (in
    // the 2-core appliance, three streams writing zeros on the async workers starved QUIC
    // until the A3 timed the connection out).
    let zero_ranges: Vec<std::ops::Range<u64>> = mine
        .iter()
        .filter(|&&i| m.blocks[i as usize].is_none())
        .map(|&i| Manifest::block_range(m.size, m.block_size, i))
        .collect();
    if block_dev && !zero_ranges.is_empty() {
        let (f, ranges) = (file.clone(), zero_ranges.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let zeros = vec![0u8; largest_len(&ranges)];
            for r in ranges {
                f.write_all_at(&zeros[..(r.end - r.start) as usize], r.start)?;
            }
            Ok(())
        })
        .await??;
    }
    for r in zero_ranges {
        Counters::add(&c.zero_blocks, 1);
        Counters::add(&c.done, r.end - r.start);
    }
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
                let expected = m.blocks.get(index as usize).copied().flatten();
                if expected != Some(id) || !pending.remove(&index) {
                    bail!(
                        "{label}: the A3 sent block {index} with an id the manifest does not \
                         name there (or twice); nothing written for it"
                    );
                }
                Counters::add(&c.chunks, 1);
                Counters::add(&c.chunk_bytes, data.len() as u64);
                group_bytes += m.block_size as usize;
                group.push((index, id, data));
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
            let (f, m2, label2) = (file.clone(), m.clone(), label.clone());
            let written =
                tokio::task::spawn_blocking(move || write_group(&f, &m2, &label2, chunks))
                    .await??;
            Counters::add(&c.bytes_io, written);
            Counters::add(&c.done, written);
        }
        if end {
            break;
        }
    }
    if let Some(&i) = pending.iter().min() {
        bail!(
            "{label}: the A3 ended the stream without block at offset {}",
            i * u64::from(m.block_size)
        );
    }
    Ok(())
}

/// Decodes each chunk, checks it against its id and length, and writes it. Stops at the
/// first bad chunk, having written nothing of it. Returns the bytes written.
fn write_group(
    f: &File,
    m: &Manifest,
    label: &str,
    chunks: Vec<(u64, WireId, Vec<u8>)>,
) -> anyhow::Result<u64> {
    let mut written = 0;
    for (index, id, data) in chunks {
        let r = Manifest::block_range(m.size, m.block_size, index);
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

/// The largest range's length: one zero buffer serves every write.
fn largest_len(ranges: &[std::ops::Range<u64>]) -> usize {
    ranges
        .iter()
        .map(|r| (r.end - r.start) as usize)
        .max()
        .unwrap_or(0)
}
