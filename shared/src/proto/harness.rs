//! A two-peer in-memory harness (quinn's `tests/util.rs` `Pair`, scaled down): an agent and
//! the A3's assembler joined by byte queues that carry real frames, with a fake store. The
//! agent side here is a model of `abd-agent`'s pipeline: plan, read, classify, batch, send
//! what is needed. Randomness is seeded.

use std::collections::{HashMap, VecDeque};

use super::*;

/// A deterministic xorshift generator (no OS randomness in tests).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const BS: u32 = 64 << 10;

/// A disk with zero runs, duplicated regions and a short last block.
fn image(seed: u64, blocks: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let bs = BS as usize;
    let mut img = vec![0u8; blocks * bs + 12345];
    for b in 0..blocks + 1 {
        let end = ((b + 1) * bs).min(img.len());
        match rng.next() % 4 {
            0 => {} // zeros
            1 if b > 2 => {
                let src = (rng.next() as usize % (b - 1)) * bs;
                let len = end - b * bs;
                img.copy_within(src..src + len, b * bs);
            }
            _ => img[b * bs..end]
                .iter_mut()
                .for_each(|x| *x = rng.next() as u8),
        }
    }
    img
}

/// One agent → A3 data stream and its way back, as frames in queues.
#[derive(Default)]
struct Pipe {
    up: VecDeque<u8>,
    down: VecDeque<u8>,
}

fn send<T: serde::Serialize>(q: &mut VecDeque<u8>, m: &T) {
    q.extend(frame::encode(m));
}

fn recv<T: serde::de::DeserializeOwned>(q: &mut VecDeque<u8>) -> Option<T> {
    let bytes: Vec<u8> = q.iter().copied().collect();
    let (m, used) = frame::parse(&bytes).unwrap()?;
    q.drain(..used);
    Some(m)
}

/// A block list: what the A3 builds (in memory here; a temp file in the A3).
type List = Vec<Option<WireId>>;

/// Backs up `img` through the pipe; `stop_after` drops the agent after that many batches.
/// `base` is the last version's block list, for an incremental. Returns the block list, or
/// the assembler's complaint. `store` is the fake chunk store.
fn backup(
    img: &[u8],
    base: Option<&List>,
    cbt: Option<&CbtBitmap>,
    store: &mut HashMap<WireId, Vec<u8>>,
    stop_after: Option<usize>,
) -> (Result<List, AssembleError>, usize) {
    let size = img.len() as u64;
    let g = Geometry {
        size,
        block_size: BS,
    };
    // The harness's images all have the same size.
    let base_geometry = base.map(|_| g);
    let mut a3 = Assembler::new(
        size,
        BS,
        base_geometry,
        cbt,
        base.cloned().unwrap_or_default(),
    )
    .unwrap();
    let mut pipe = Pipe::default();
    // The plan goes down first, in pages; the agent reads what it says.
    for page in a3.plan().pages() {
        send(&mut pipe.down, &page);
    }
    let mut rx = PlanReceiver::new(g.blocks());
    let reads = loop {
        match recv::<DataDown>(&mut pipe.down) {
            Some(DataDown::Plan { first, bits, last }) => {
                if let Some(reads) = rx.page(first, &bits, last).unwrap() {
                    break reads;
                }
            }
            other => panic!("expected a plan page, got {other:?}"),
        }
    };
    assert_eq!(
        &reads,
        &a3.plan().reads,
        "the agent reads what the A3 planned"
    );
    let mut sent_chunks = 0;
    let mut batches = 0;
    let mut held: HashMap<u64, Vec<(usize, WireId, Vec<u8>)>> = HashMap::new();
    'agent: for run in reads.runs() {
        for first in (run.start..run.end).step_by(5) {
            if stop_after == Some(batches) {
                break 'agent;
            }
            let last = (first + 5).min(run.end);
            let mut entries = Vec::new();
            let mut datas = Vec::new();
            for (k, i) in (first..last).enumerate() {
                let r = g.block_range(i);
                let data = &img[r.start as usize..r.end as usize];
                let entry = if data.iter().all(|&b| b == 0) {
                    BlockRef::Zero
                } else {
                    let id = *blake3::hash(data).as_bytes();
                    datas.push((k, id, data.to_vec()));
                    BlockRef::Hash(id)
                };
                entries.push(entry);
            }
            let seq = batches as u64;
            send(
                &mut pipe.up,
                &DataUp::Hashes(HashBatch {
                    seq,
                    first,
                    entries: entries.clone(),
                }),
            );
            held.insert(seq, datas);
            batches += 1;
            // The A3 answers every batch it has whole.
            while let Some(DataUp::Hashes(b)) = recv::<DataUp>(&mut pipe.up) {
                let pending = a3.record_batch(&b).unwrap();
                let present: Vec<bool> = pending.ids().map(|id| store.contains_key(id)).collect();
                let need = a3.resolve(pending, &present);
                send(&mut pipe.down, &need);
            }
            // The agent sends what is needed.
            while let Some(DataDown::Need { seq, bits }) = recv::<DataDown>(&mut pipe.down) {
                let datas = held.remove(&seq).unwrap();
                for (k, id, data) in datas {
                    if need_bit(&bits, k) {
                        send(&mut pipe.up, &DataUp::Chunk { id, data });
                        sent_chunks += 1;
                    }
                }
            }
            while let Some(DataUp::Chunk { id, data }) = recv::<DataUp>(&mut pipe.up) {
                assert_eq!(blake3::hash(&data).as_bytes(), &id, "the A3 re-hashes");
                assert!(a3.is_outstanding(&id));
                store.insert(id, data);
                a3.chunk_received(&id).unwrap();
            }
        }
    }
    (a3.finish().map(|(_, list)| list), sent_chunks)
}

/// Restores through `streams` data streams carrying real frames: the A3's side turns the
/// list into chunks and zero runs per stream, the agent's side checks the order.
fn restore(list: &List, size: u64, streams: u32, store: &HashMap<WireId, Vec<u8>>) -> Vec<u8> {
    let g = Geometry {
        size,
        block_size: BS,
    };
    let mut out = vec![0xEEu8; size as usize];
    for s in 0..streams {
        let mut down = VecDeque::new();
        let entries = list
            .iter()
            .enumerate()
            .map(|(i, b)| Ok::<_, ()>((i as u64, *b)));
        for item in restore_items(s, streams, entries) {
            let msg = match item.unwrap() {
                RestoreItem::Chunk { index, id } => DataDown::Chunk {
                    index,
                    id,
                    data: store[&id].clone(),
                },
                RestoreItem::Zeros { first, count } => DataDown::Zeros { first, count },
            };
            send(&mut down, &msg);
        }
        send(&mut down, &DataDown::End);
        let mut cover = Coverage::new(s, streams, g);
        loop {
            match recv::<DataDown>(&mut down).unwrap() {
                DataDown::Chunk { index, id, data } => {
                    cover.chunk(index).unwrap();
                    assert_eq!(blake3::hash(&data).as_bytes(), &id);
                    let r = g.block_range(index);
                    out[r.start as usize..r.end as usize].copy_from_slice(&data);
                }
                DataDown::Zeros { first, count } => {
                    let ords = cover.zeros(first, count).unwrap();
                    for blocks in cover.stripes().block_ranges(ords) {
                        let r = g.bytes_of(0..blocks.start)..g.bytes_of(0..blocks.end);
                        out[r.start as usize..r.end as usize].fill(0);
                    }
                }
                DataDown::End => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        cover.finish().unwrap();
    }
    out
}

#[test]
fn full_backup_round_trips_and_dedups() {
    let img = image(1, 40);
    let mut store = HashMap::new();
    let (m, sent) = backup(&img, None, None, &mut store, None);
    let m = m.unwrap();
    assert_eq!(restore(&m, img.len() as u64, 3, &store), img);
    // Each distinct non-zero block was sent exactly once.
    assert_eq!(sent, store.len());
    let distinct: std::collections::HashSet<_> = m.iter().flatten().collect();
    assert_eq!(distinct.len(), store.len());
    // Re-backup of the same image: nothing sent.
    let (m2, sent2) = backup(&img, None, None, &mut store, None);
    assert_eq!(sent2, 0);
    assert_eq!(m2.unwrap(), m);
}

#[test]
fn cbt_incremental_reads_only_changed_blocks() {
    let mut img = image(2, 40);
    let mut store = HashMap::new();
    let base = backup(&img, None, None, &mut store, None).0.unwrap();
    // Change two granules; mark them (and only them) in the bitmap.
    let mut bits = vec![0u8; 8];
    for g in [3u64, 17] {
        img[(g * CBT_GRANULE) as usize + 100] ^= 0x5a;
        bits[(g / 8) as usize] |= 0x80 >> (g % 8);
    }
    let cbt = CbtBitmap::from_bytes(bits);
    let before = store.len();
    let (m, sent) = backup(&img, Some(&base), Some(&cbt), &mut store, None);
    let m = m.unwrap();
    assert_eq!(restore(&m, img.len() as u64, 3, &store), img);
    assert!(sent <= 2 && store.len() - before == sent);
}

#[test]
fn a_peer_dropped_mid_job_leaves_nothing_to_commit() {
    let img = image(3, 40);
    let mut store = HashMap::new();
    let (m, _) = backup(&img, None, None, &mut store, Some(3));
    let err = m.unwrap_err();
    assert!(matches!(err, AssembleError::Incomplete(_)), "{err}");
    assert!(err.to_string().contains("offset"), "{err}");
}
