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

/// Backs up `img` through the pipe; `stop_after` drops the agent after that many batches.
/// Returns the manifest, or the assembler's complaint. `store` is the fake chunk store.
fn backup(
    img: &[u8],
    base: Option<Manifest>,
    cbt: Option<&CbtBitmap>,
    store: &mut HashMap<WireId, Vec<u8>>,
    stop_after: Option<usize>,
) -> (Result<Manifest, AssembleError>, usize) {
    let size = img.len() as u64;
    let agent_plan = plan(size, BS, base.as_ref(), cbt);
    let mut a3 = Assembler::new(size, BS, base.clone(), cbt);
    assert_eq!(a3.plan(), &agent_plan, "both peers plan alike");
    let mut pipe = Pipe::default();
    let mut sent_chunks = 0;
    let mut batches = 0;
    let mut held: HashMap<u64, Vec<(WireId, Vec<u8>)>> = HashMap::new();
    'agent: for run in &agent_plan.reads {
        for first in (run.start..run.end).step_by(5) {
            if stop_after == Some(batches) {
                break 'agent;
            }
            let last = (first + 5).min(run.end);
            let mut entries = Vec::new();
            let mut datas = Vec::new();
            for i in first..last {
                let r = Manifest::block_range(size, BS, i);
                let data = &img[r.start as usize..r.end as usize];
                let entry = if data.iter().all(|&b| b == 0) {
                    BlockRef::Zero
                } else {
                    let id = *blake3::hash(data).as_bytes();
                    let base_id = base
                        .as_ref()
                        .and_then(|b| b.blocks.get(i as usize))
                        .copied();
                    if base_id == Some(Some(id)) {
                        BlockRef::Same
                    } else {
                        BlockRef::Hash(id)
                    }
                };
                if let BlockRef::Hash(id) = entry {
                    datas.push((id, data.to_vec()));
                }
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
                let mut hashed = datas.into_iter();
                let batch_entries = &entries;
                for (k, e) in batch_entries.iter().enumerate() {
                    if let BlockRef::Hash(_) = e {
                        let (id, data) = hashed.next().unwrap();
                        if need_bit(&bits, k) {
                            send(&mut pipe.up, &DataUp::Chunk { id, data });
                            sent_chunks += 1;
                        }
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
    (a3.finish(), sent_chunks)
}

fn restore(m: &Manifest, store: &HashMap<WireId, Vec<u8>>) -> Vec<u8> {
    let mut out = vec![0u8; m.size as usize];
    for (i, id) in m.blocks.iter().enumerate() {
        let r = Manifest::block_range(m.size, m.block_size, i as u64);
        if let Some(id) = id {
            out[r.start as usize..r.end as usize].copy_from_slice(&store[id]);
        }
    }
    out
}

#[test]
fn full_backup_round_trips_and_dedups() {
    let img = image(1, 40);
    let mut store = HashMap::new();
    let (m, sent) = backup(&img, None, None, &mut store, None);
    let m = m.unwrap();
    assert_eq!(restore(&m, &store), img);
    // Each distinct non-zero block was sent exactly once.
    assert_eq!(sent, store.len());
    let distinct: std::collections::HashSet<_> = m.blocks.iter().flatten().collect();
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
    let (m, sent) = backup(&img, Some(base), Some(&cbt), &mut store, None);
    let m = m.unwrap();
    assert_eq!(restore(&m, &store), img);
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

#[test]
fn hostile_batches_are_refused() {
    let mut a3 = Assembler::new(10 * u64::from(BS), BS, None, None);
    let batch = |first, n| HashBatch {
        seq: 0,
        first,
        entries: vec![BlockRef::Zero; n],
    };
    assert!(a3.record_batch(&batch(8, 3)).is_err(), "past the end");
    assert!(
        a3.record_batch(&batch(0, MAX_BATCH_ENTRIES + 1)).is_err(),
        "too long"
    );
    let same = HashBatch {
        seq: 1,
        first: 0,
        entries: vec![BlockRef::Same],
    };
    assert!(
        a3.record_batch(&same).is_err(),
        "same as a base that does not exist"
    );
    let p = a3.record_batch(&batch(0, 2)).unwrap();
    assert!(p.is_empty());
    assert!(a3.record_batch(&batch(1, 1)).is_err(), "reported twice");
    assert!(a3.chunk_received(&[7; 32]).is_err(), "unrequested chunk");
}
