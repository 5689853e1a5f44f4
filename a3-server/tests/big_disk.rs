//! A 16 TiB disk (64 Mi blocks at 256 KiB, built synthetically) through the A3's real
//! data-port code, with an in-memory agent at the other end of each stream:
//! - a CBT incremental whose base lists 64 Mi stored blocks (naming a few chunks) and whose
//!   CBT bitmap marks nothing: the plan pages go down, the agent reads nothing, and the A3
//!   builds and commits the 64 Mi-entry manifest (2.1 GB) through its scratch block list;
//! - a restore of a mostly-zero 16 TiB version over three streams, each checked in order by
//!   the agent's coverage check.
//!
//! Every frame is measured against a bound of a few MiB, and a counting allocator gives
//! the process's peak heap (both sides share this process) in each phase: bounded, where a
//! block list in memory would take 2 GiB and the old one-frame manifest could not even be
//! encoded.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use a3_server::catalog::Catalog;
use a3_server::dataport::backup::BackupWork;
use a3_server::dataport::restore::RestoreWork;
use a3_server::dataport::storage::{BackupSession, StoreHandle};
use a3_server::dataport::wire::{RecvStream, SendStream};
use a3_server::store::{DiskBlocks, Store, VersionId};
use a3_shared::chunk::{self, BlockId, ChunkEncoder};
use a3_shared::proto::slots::Slots;
use a3_shared::proto::{
    A3Msg, BackupJob, CbtBitmap, Coverage, DataDown, DataUp, FRAME_HEADER_LEN, Geometry,
    PlanReceiver, RestoreJob, frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIB: usize = 1 << 20;
const BS: u32 = 256 << 10;
const SIZE: u64 = 16 << 40;
const BLOCKS: u64 = SIZE / BS as u64;
/// No frame of either side may be larger (a 1 MiB plan page plus its header).
const FRAME_BOUND: usize = 2 * MIB;
/// The peak heap allowed in a phase; a block list in memory alone would be 2 GiB.
const HEAP_BOUND: usize = 160 * MIB;

/// Starts a phase: the peak becomes what is live now; returns that.
fn phase() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

fn peak_since(base: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

/// A few distinct compressible blocks, stored, and their ids.
fn store_chunks(store: &Store, n: u8) -> Vec<BlockId> {
    let s = store.begin_backup("seed").unwrap();
    let mut enc = ChunkEncoder::new(1).unwrap();
    let ids = (1..=n)
        .map(|k| {
            let block = vec![k; BS as usize];
            let id = BlockId::of(&block);
            s.insert_chunk(&id, &enc.encode(&block).unwrap()).unwrap();
            id
        })
        .collect();
    drop(s);
    ids
}

/// Commits a 16 TiB version of `subject` whose block `i` is `at(i)`, built in a spool.
fn commit_synthetic(
    store: &Store,
    subject: &str,
    at: impl Fn(u64) -> Option<BlockId>,
) -> VersionId {
    let session = store.begin_backup(subject).unwrap();
    let mut spool = store.spool().unwrap();
    spool.resize(BLOCKS).unwrap();
    let per_write = 32 * 1024;
    let mut slots = vec![None; per_write];
    for first in (0..BLOCKS).step_by(per_write) {
        for (k, s) in slots.iter_mut().enumerate() {
            *s = at(first + k as u64).map(|id| id.0);
        }
        spool.write(first, &slots).unwrap();
    }
    let g = Geometry {
        size: SIZE,
        block_size: BS,
    };
    session
        .add_disk("xvda", DiskBlocks::Spooled(g, spool))
        .unwrap();
    session
        .commit(serde_json::json!({"test": "16 TiB"}))
        .unwrap()
}

/// One stream: the A3's end (boxed halves, as the data port takes them) and the agent's.
fn pipe() -> (
    (SendStream, RecvStream),
    (tokio::io::DuplexStream, tokio::io::DuplexStream),
) {
    let (a3_down, agent_down) = tokio::io::duplex(4 * MIB);
    let (agent_up, a3_up) = tokio::io::duplex(4 * MIB);
    ((Box::new(a3_down), Box::new(a3_up)), (agent_down, agent_up))
}

/// Receives one frame on the agent's side; returns the message and the frame's length.
async fn recv_frame(r: &mut tokio::io::DuplexStream) -> (DataDown, usize) {
    let mut header = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut header).await.unwrap();
    let len = frame::payload_len(header).unwrap();
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.unwrap();
    (
        frame::decode_payload(&payload).unwrap(),
        FRAME_HEADER_LEN + len,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_tib_disk_moves_in_bounded_frames_and_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Catalog::in_memory().unwrap()).unwrap();
    let ids = store_chunks(&store, 4);
    let g = Geometry {
        size: SIZE,
        block_size: BS,
    };

    // The base: 64 Mi stored blocks naming 4 chunks.
    let t = Instant::now();
    let base_mem = phase();
    let base = {
        let (store, ids) = (store.clone(), ids.clone());
        tokio::task::spawn_blocking(move || {
            commit_synthetic(&store, "big", |i| Some(ids[(i % 4) as usize]))
        })
        .await
        .unwrap()
    };
    let base_peak = peak_since(base_mem);
    eprintln!(
        "base of 64 Mi blocks committed in {:.1?}, peak heap {} MiB",
        t.elapsed(),
        base_peak / MIB
    );

    // The incremental: the CBT bitmap marks nothing (32 MiB of zero bits, as XAPI gives).
    let t = Instant::now();
    let inc_mem = phase();
    let job = A3Msg::Backup(BackupJob {
        job: 1,
        device: "xvdb".into(),
        disk: "xvda".into(),
        block_size: BS,
    });
    assert!(frame::encode(&job).len() < 1024, "the assignment is small");
    let session = BackupSession::shared(Arc::new(store.begin_backup("big").unwrap()));
    let cbt = CbtBitmap::from_bytes(vec![0; (SIZE / (64 << 10) / 8) as usize]);
    let (start, cbt) = session.base_spool(base, "xvda", cbt).await.unwrap();
    assert_eq!(start.lost, 0);
    assert_eq!(start.geometry, g);
    let work = Arc::new(BackupWork::new(
        1,
        "abd-1".into(),
        "xvda".into(),
        Some(SIZE),
        BS,
        Some(start.geometry),
        Some(cbt),
        start.spool,
        session,
        None,
    ));
    let ((mut a3_send, mut a3_recv), (mut down, mut up)) = pipe();
    let served = {
        let work = work.clone();
        tokio::spawn(async move {
            work.serve_stream(0, SIZE, &mut a3_send, &mut a3_recv)
                .await
                .unwrap()
        })
    };
    // The agent: the plan pages, then End (nothing to read).
    let mut plan = PlanReceiver::new(BLOCKS);
    let mut largest = 0;
    let reads = loop {
        let (msg, len) = recv_frame(&mut down).await;
        largest = largest.max(len);
        let DataDown::Plan { first, bits, last } = msg else {
            panic!("expected a plan page, got {msg:?}")
        };
        if let Some(reads) = plan.page(first, &bits, last).unwrap() {
            break reads;
        }
    };
    assert_eq!(reads.count_ones(), 0, "the CBT bitmap marks nothing");
    drop(reads);
    up.write_all(&frame::encode(&DataUp::End)).await.unwrap();
    let (end, _) = recv_frame(&mut down).await;
    assert_eq!(end, DataDown::End);
    served.await.unwrap();
    let version: VersionId = work.commit().await.unwrap().parse().unwrap();
    let inc_peak = peak_since(inc_mem);
    eprintln!(
        "incremental committed in {:.1?}: largest frame {largest} bytes, peak heap {} MiB",
        t.elapsed(),
        inc_peak / MIB
    );
    assert!(largest <= FRAME_BOUND, "a {largest}-byte frame");
    let info = store.version(version).unwrap();
    assert_eq!((info.disks[0].size, info.disks[0].block_size), (SIZE, BS));
    {
        // The committed manifest lists the base's blocks: spot checks, streamed.
        let (store, ids) = (store.clone(), ids.clone());
        tokio::task::spawn_blocking(move || {
            let mut m = store.open_manifest(version, "xvda").unwrap();
            assert_eq!(m.geometry(), g);
            for _ in 0..1000 {
                let (i, b) = m.next_entry().unwrap().unwrap();
                assert_eq!(b, Some(ids[(i % 4) as usize]));
            }
        })
        .await
        .unwrap();
    }

    // A mostly-zero 16 TiB version, restored over three streams.
    let sparse = {
        let (store, ids) = (store.clone(), ids.clone());
        tokio::task::spawn_blocking(move || {
            commit_synthetic(&store, "sparse", |i| {
                (i % 65536 == 7).then(|| ids[(i / 65536 % 4) as usize])
            })
        })
        .await
        .unwrap()
    };
    let t = Instant::now();
    let restore_mem = phase();
    let job = A3Msg::Restore(RestoreJob {
        job: 2,
        target: "/dev/xvdb".into(),
        geometry: g,
        label: "sparse".into(),
    });
    assert!(frame::encode(&job).len() < 1024, "the assignment is small");
    let work = Arc::new(RestoreWork::new(
        2,
        "abd-1".into(),
        "sparse".into(),
        sparse,
        "xvda".into(),
        g,
        StoreHandle::new(store.clone()),
    ));
    let mut agents = Vec::new();
    for stream in 0..3u32 {
        let ((mut a3_send, _a3_recv), (mut down, _up)) = pipe();
        let work = work.clone();
        let a3 = tokio::spawn(async move { work.serve_stream(stream, 3, &mut a3_send).await });
        agents.push(tokio::spawn(async move {
            let mut cover = Coverage::new(stream, 3, g);
            let (mut largest, mut chunks, mut zeros) = (0, 0u64, 0u64);
            loop {
                let (msg, len) = recv_frame(&mut down).await;
                largest = largest.max(len);
                match msg {
                    DataDown::Chunk { index, id, data } => {
                        cover.chunk(index).unwrap();
                        chunk::decode(&BlockId(id), &data).unwrap();
                        chunks += 1;
                    }
                    DataDown::Zeros { first, count } => {
                        cover.zeros(first, count).unwrap();
                        zeros += count;
                    }
                    DataDown::End => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            cover.finish().unwrap();
            a3.await.unwrap().unwrap();
            (largest, chunks, zeros)
        }));
    }
    let (mut largest, mut chunks, mut zeros) = (0, 0, 0);
    for a in agents {
        let (l, c, z) = a.await.unwrap();
        largest = largest.max(l);
        chunks += c;
        zeros += z;
    }
    work.check_served().unwrap();
    let restore_peak = peak_since(restore_mem);
    eprintln!(
        "restore of 16 TiB sent in {:.1?}: {chunks} chunks, {zeros} zero blocks, largest \
         frame {largest} bytes, peak heap {} MiB",
        t.elapsed(),
        restore_peak / MIB
    );
    assert_eq!(chunks, BLOCKS / 65536);
    assert_eq!(chunks + zeros, BLOCKS);
    assert!(largest <= FRAME_BOUND, "a {largest}-byte frame");
    for (what, peak) in [
        ("base commit", base_peak),
        ("incremental", inc_peak),
        ("restore", restore_peak),
    ] {
        assert!(peak < HEAP_BOUND, "{what}: peak heap {} MiB", peak / MIB);
    }
}
