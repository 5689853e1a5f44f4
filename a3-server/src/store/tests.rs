//! Store tests: round trips, dedup, commit order, crashes, corruption, GC, full disk,
//! version records and the catalog rebuilt from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use a3_shared::chunk::{BlockId, ChunkEncoder, is_zero};
use a3_shared::version_record::VersionRecord;
use serde_json::json;

use super::*;
use crate::util::clock::TestClock;

const BS: u32 = 64 << 10;

/// Deterministic incompressible bytes.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An image with random blocks, a zero run, a duplicated region and a short last block.
fn image(seed: u64) -> Vec<u8> {
    let bs = BS as usize;
    let mut img = noise(seed, 10 * bs + 1234);
    img[2 * bs..4 * bs].fill(0);
    let (head, tail) = img.split_at_mut(6 * bs);
    tail[..bs].copy_from_slice(&head[..bs]);
    img
}

fn options() -> StoreOptions {
    StoreOptions {
        sync: SyncMode::Full,
        ..StoreOptions::default()
    }
}

fn open(dir: &Path) -> Store {
    Store::open_with(dir, Catalog::in_memory().unwrap(), options()).unwrap()
}

fn chunk_path(dir: &Path, id: &BlockId) -> PathBuf {
    let hex = id.to_hex();
    dir.join("chunks")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(hex)
}

/// What a data stream does: hash, ask, send what is lacking. Returns the session and the
/// number of chunks uploaded.
fn upload(store: &Store, subject: &str, disks: &[(&str, &[u8])]) -> (BackupSession, usize) {
    let s = store.begin_backup(subject).unwrap();
    let sent = disks.iter().map(|(name, data)| send(&s, name, data)).sum();
    (s, sent)
}

/// One disk of [`upload`]: returns the number of chunks uploaded.
fn send(s: &BackupSession, name: &str, data: &[u8]) -> usize {
    let mut enc = ChunkEncoder::new(1).unwrap();
    let mut sent = 0;
    let blocks: Vec<Option<BlockId>> = data
        .chunks(BS as usize)
        .map(|b| (!is_zero(b)).then(|| BlockId::of(b)))
        .collect();
    let ids: Vec<BlockId> = blocks.iter().flatten().copied().collect();
    let have = s.has_chunks(&ids).unwrap();
    for (block, (id, have)) in data
        .chunks(BS as usize)
        .filter(|b| !is_zero(b))
        .zip(ids.iter().zip(have))
    {
        if !have && s.insert_chunk(id, &enc.encode(block).unwrap()).unwrap() != Inserted::Existing {
            sent += 1;
        }
    }
    s.add_disk(
        name,
        DiskManifest {
            size: data.len() as u64,
            block_size: BS,
            blocks,
        },
    )
    .unwrap();
    sent
}

fn backup(store: &Store, subject: &str, disks: &[(&str, &[u8])]) -> VersionId {
    upload(store, subject, disks)
        .0
        .commit(json!({"test": true}))
        .unwrap()
}

fn restore(store: &Store, version: VersionId, disk: &str) -> Vec<u8> {
    let m = store.manifest(version, disk).unwrap();
    let mut out = Vec::with_capacity(m.size as usize);
    for (i, b) in m.blocks.iter().enumerate() {
        let len = (m.size - m.offset_of(i)).min(u64::from(m.block_size)) as usize;
        match b {
            None => out.resize(out.len() + len, 0),
            Some(id) => {
                let plain = store.read_block(id).unwrap();
                assert_eq!(plain.len(), len);
                out.extend_from_slice(&plain);
            }
        }
    }
    out
}

fn verify_all(store: &Store) -> VerifyReport {
    store.verify(VerifyScope::All, &mut |_| {}).unwrap()
}

/// The data path shares these across tasks and calls them through `spawn_blocking`.
#[test]
fn the_store_and_its_sessions_are_send_and_sync() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Store>();
    shared::<BackupSession>();
}

#[test]
fn round_trip_with_zero_runs_duplicates_and_a_short_last_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let img = image(1);
    let v = backup(&store, "web", &[("xvda", &img)]);
    assert_eq!(restore(&store, v, "xvda"), img);
    let m = store.manifest(v, "xvda").unwrap();
    assert_eq!(m.blocks.len(), 11);
    assert_eq!(m.blocks.iter().filter(|b| b.is_none()).count(), 2);
    assert_eq!(m.blocks[6], m.blocks[0]);
    let info = store.version(v).unwrap();
    assert_eq!(info.metadata, json!({"test": true}));
    assert_eq!(info.disks[0].size, img.len() as u64);
    assert_eq!(store.latest_version("web").unwrap().unwrap().id, v);
    assert_eq!(store.latest_version("db").unwrap(), None);
    let stats = store.stats().unwrap();
    // 11 blocks: 2 zero, one duplicate: 8 distinct chunks.
    assert_eq!((stats.versions, stats.chunks), (1, 8));
    assert_eq!(stats.logical_bytes, img.len() as u64);
    assert!(verify_all(&store).is_ok());
    // The encoded chunk handed to an agent is the verified chunk itself.
    let id = m.blocks[0].unwrap();
    let encoded = store.read_chunk(&id).unwrap();
    assert_eq!(
        a3_shared::chunk::decode(&id, &encoded).unwrap(),
        img[..BS as usize]
    );
}

#[test]
fn a_block_shared_by_two_disks_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = noise(2, 4 * BS as usize);
    let mut b = noise(3, 4 * BS as usize);
    b[BS as usize..2 * BS as usize].copy_from_slice(&a[2 * BS as usize..3 * BS as usize]);
    let (s, sent) = upload(&store, "vm-a", &[("xvda", &a)]);
    assert_eq!(sent, 4);
    let va = s.commit(json!({})).unwrap();
    // Another VM's disk: the shared block is found, not sent.
    let (s, sent) = upload(&store, "vm-b", &[("xvda", &b)]);
    assert_eq!(sent, 3);
    let vb = s.commit(json!({})).unwrap();
    assert_eq!(store.stats().unwrap().chunks, 7);
    assert_eq!(restore(&store, va, "xvda"), a);
    assert_eq!(restore(&store, vb, "xvda"), b);
    // Within one version too: two disks of a VM.
    let v2 = backup(&store, "vm-c", &[("xvda", &a), ("xvdb", &b)]);
    assert_eq!(store.stats().unwrap().chunks, 7);
    assert_eq!(restore(&store, v2, "xvdb"), b);
    let stats = store.stats().unwrap();
    assert!(stats.dedup_ratio.unwrap() > 1.9, "{stats:?}");
}

#[test]
fn a_version_is_visible_only_once_committed_and_only_if_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let img = image(4);
    let (s, _) = upload(&store, "web", &[("xvda", &img)]);
    assert!(store.versions(None).unwrap().is_empty());
    assert_eq!(store.latest_version("web").unwrap(), None);
    let v = s.commit(json!({})).unwrap();
    assert_eq!(store.versions(Some("web")).unwrap()[0].id, v);

    // An upload whose bytes are not its id's is refused, and nothing is stored.
    let s = store.begin_backup("web").unwrap();
    let mut enc = ChunkEncoder::new(1).unwrap();
    let liar = BlockId::of(b"something else");
    let err = s
        .insert_chunk(&liar, &enc.encode(&noise(5, 100)).unwrap())
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
    assert!(!chunk_path(dir.path(), &liar).exists());

    // A manifest naming a chunk the store lacks (a CBT base whose chunk was quarantined,
    // say) commits nothing.
    s.add_disk(
        "xvda",
        DiskManifest {
            size: u64::from(BS),
            block_size: BS,
            blocks: vec![Some(liar)],
        },
    )
    .unwrap();
    let err = s.commit(json!({})).unwrap_err().to_string();
    assert!(
        err.contains("offset 0") && err.contains("nothing was committed"),
        "{err}"
    );
    assert_eq!(store.versions(None).unwrap().len(), 1);

    // Inconsistent manifests and empty versions are refused.
    let s = store.begin_backup("web").unwrap();
    let bad = DiskManifest {
        size: 3 * u64::from(BS),
        block_size: BS,
        blocks: vec![None],
    };
    assert!(s.add_disk("xvda", bad).is_err());
    assert!(s.commit(json!({})).is_err());
    assert_eq!(store.versions(None).unwrap().len(), 1);
}

#[test]
fn a_crash_mid_backup_leaves_no_version_and_gc_reclaims_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("catalog.db");
    let root = dir.path().join("store");
    let img = image(6);
    let v1;
    {
        let store = Store::open_with(&root, Catalog::open(&db).unwrap(), options()).unwrap();
        v1 = backup(&store, "web", &[("xvda", &img)]);
        // A second backup gets as far as a durable manifest, then the A3 dies before the
        // catalog row: drop everything without committing.
        let other = noise(7, 5 * BS as usize);
        let (s, sent) = upload(&store, "web", &[("xvda", &other)]);
        assert_eq!(sent, 5);
        let orphan = DiskManifest {
            size: other.len() as u64,
            block_size: BS,
            blocks: other
                .chunks(BS as usize)
                .map(|b| Some(BlockId::of(b)))
                .collect(),
        }
        .encode();
        store
            .inner
            .backend
            .put(Space::Manifests, &BlockId::of(&orphan), &orphan)
            .unwrap();
        drop(s);
    }
    let store = Store::open_with(&root, Catalog::open(&db).unwrap(), options()).unwrap();
    let versions = store.versions(None).unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].id, v1);
    let report = verify_all(&store);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.unreferenced, 5);
    let gc = store.gc().unwrap();
    assert_eq!((gc.chunks_removed, gc.manifests_removed), (5, 1), "{gc:?}");
    assert_eq!(store.stats().unwrap().chunks, 8);
    assert_eq!(restore(&store, v1, "xvda"), img);
    assert!(verify_all(&store).is_ok());
    // The rerun succeeds.
    let other = noise(7, 5 * BS as usize);
    let v2 = backup(&store, "web", &[("xvda", &other)]);
    assert_eq!(restore(&store, v2, "xvda"), other);
}

#[test]
fn a_corrupt_chunk_is_named_quarantined_and_stored_again_by_the_next_backup() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let img = image(8);
    let v1 = backup(&store, "web", &[("xvda", &img)]);
    let v2 = backup(&store, "web", &[("xvda", &img)]);
    let m = store.manifest(v1, "xvda").unwrap();
    // Block 0 is also block 6 (the duplicated region).
    let bad = m.blocks[0].unwrap();
    let path = chunk_path(dir.path(), &bad);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();

    let report = store.verify(VerifyScope::Version(v1), &mut |_| {}).unwrap();
    assert!(!report.is_ok());
    let named: Vec<(VersionId, &str, u64)> = report
        .bad_blocks
        .iter()
        .map(|b| (b.version, b.disk.as_str(), b.offset))
        .collect();
    assert_eq!(named, [(v1, "xvda", 0), (v1, "xvda", 6 * u64::from(BS))]);
    assert_eq!(report.bad_blocks[0].chunk, bad.to_hex());
    assert_eq!(report.quarantined.len(), 1);
    assert!(report.quarantined[0].ends_with(".bad"));
    assert!(!path.exists());
    assert!(Path::new(&report.quarantined[0]).exists());

    // Reads fail clearly; the chunk is not offered for dedup.
    let err = store.read_block(&bad).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    let s = store.begin_backup("web").unwrap();
    assert_eq!(s.has_chunks(&[bad]).unwrap(), [false]);
    drop(s);

    // The next backup of the disk uploads it again, and both old versions heal.
    let (s, sent) = upload(&store, "web", &[("xvda", &img)]);
    assert_eq!(sent, 1);
    s.commit(json!({})).unwrap();
    assert_eq!(restore(&store, v1, "xvda"), img);
    assert_eq!(restore(&store, v2, "xvda"), img);
    let report = verify_all(&store);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(store.stats().unwrap().quarantined_chunks, 1);

    // A read that finds damage reports it and quarantines the chunk itself.
    let other = m.blocks[1].unwrap();
    let path = chunk_path(dir.path(), &other);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let err = store.read_chunk(&other).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&other.to_hex()), "{err}");
    assert!(!path.exists());
}

#[test]
fn gc_spares_what_a_running_backup_inserted_or_was_told_exists() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let keep = noise(9, 2 * BS as usize);
    let v1 = backup(&store, "web", &[("xvda", &keep)]);
    // Two unreferenced chunks, from aborted backups.
    let reused = noise(10, BS as usize);
    let lost = noise(11, BS as usize);
    drop(upload(&store, "old", &[("xvda", &reused), ("xvdb", &lost)]));

    // A backup starts, uploads a new block and is told the store has `reused`.
    let fresh = noise(12, BS as usize);
    let mut disk = fresh.clone();
    disk.extend_from_slice(&reused);
    let (s, sent) = upload(&store, "new", &[("xvda", &disk)]);
    assert_eq!(sent, 1);

    let gc = store.gc().unwrap();
    assert_eq!(gc.chunks_removed, 1, "{gc:?}");
    assert_eq!(gc.chunks_kept_recent, 2, "{gc:?}");
    assert!(!chunk_path(dir.path(), &BlockId::of(&lost)).exists());
    let v2 = s.commit(json!({})).unwrap();
    assert_eq!(restore(&store, v2, "xvda"), disk);
    assert_eq!(restore(&store, v1, "xvda"), keep);
    assert!(verify_all(&store).is_ok());
    // Once committed, GC keeps it because a version uses it.
    assert_eq!(store.gc().unwrap().chunks_removed, 0);
}

#[test]
fn a_writer_that_lost_its_lease_fails_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        Catalog::in_memory().unwrap(),
        StoreOptions {
            lease_idle_limit: Duration::ZERO,
            ..options()
        },
    )
    .unwrap();
    let img = noise(13, 2 * BS as usize);
    let (s, _) = upload(&store, "web", &[("xvda", &img)]);
    let gc = store.gc().unwrap();
    assert_eq!(gc.leases_revoked, ["web"]);
    // Its chunks were not protected any more, so the commit must not name them.
    assert_eq!(gc.chunks_removed, 2);
    assert!(s.has_chunks(&[BlockId::of(&img)]).is_err());
    let err = s.commit(json!({})).unwrap_err().to_string();
    assert!(
        err.contains("lease was lost") && err.contains("run the backup again"),
        "{err}"
    );
    assert!(store.versions(None).unwrap().is_empty());
}

#[test]
fn gc_deletes_nothing_when_it_cannot_read_every_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let img = noise(14, 2 * BS as usize);
    backup(&store, "web", &[("xvda", &img)]);
    drop(upload(&store, "old", &[("xvda", &noise(15, BS as usize))]));
    let before = store.stats().unwrap().chunks;
    assert_eq!(before, 3);
    let manifests = dir.path().join("manifests");
    for d in std::fs::read_dir(&manifests).unwrap() {
        std::fs::remove_dir_all(d.unwrap().path()).unwrap();
    }
    let err = store.gc().unwrap_err();
    assert!(matches!(err, StoreError::GcAborted { .. }), "{err}");
    assert!(err.to_string().contains("nothing was deleted"), "{err}");
    assert_eq!(store.stats().unwrap().chunks, before);
    // Verify names the version whose manifest is gone.
    let report = verify_all(&store);
    assert_eq!(report.bad_manifests.len(), 1);
    assert_eq!(report.bad_manifests[0].disk, "xvda");
}

#[test]
fn concurrent_sessions_share_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let common = noise(16, 2 * BS as usize);
    let images: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let mut img = common.clone();
            img.extend_from_slice(&noise(100 + i, 3 * BS as usize));
            img
        })
        .collect();
    let versions: Vec<VersionId> = std::thread::scope(|sc| {
        let handles: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let store = store.clone();
                sc.spawn(move || backup(&store, &format!("vm{i}"), &[("xvda", img)]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (v, img) in versions.iter().zip(&images) {
        assert_eq!(&restore(&store, *v, "xvda"), img);
    }
    assert_eq!(store.stats().unwrap().chunks, 2 + 4 * 3);
    assert!(verify_all(&store).is_ok());
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("running `mount` (util-linux: apt-get install mount)");
        assert!(
            out.status.success(),
            "mount -t tmpfs {}: {}; this test needs root (CAP_SYS_ADMIN)",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_gives_a_clear_error_and_leaves_the_store_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(dir.path().join("mnt"), "4m");
    let root = mnt.0.join("store");
    let store = open(&root);
    let img = noise(17, 2 * BS as usize);
    let v1 = backup(&store, "web", &[("xvda", &img)]);

    let s = store.begin_backup("web").unwrap();
    let mut enc = ChunkEncoder::new(1).unwrap();
    let mut err = None;
    for i in 0..100 {
        let block = noise(1000 + i, BS as usize);
        if let Err(e) = s.insert_chunk(&BlockId::of(&block), &enc.encode(&block).unwrap()) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a 4 MiB tmpfs filled up");
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("store {}", root.display()))
            && msg.contains("disk full while writing chunk")
            && msg.contains("free space or run `a3-server store gc`"),
        "{msg}"
    );
    drop(s);
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    let report = verify_all(&store);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(restore(&store, v1, "xvda"), img);
    // A commit whose manifest does not fit fails the same way and commits nothing.
    let (s, _) = upload(&store, "web", &[("xvda", &img)]);
    let filler = mnt.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let page = vec![0xa5u8; 4096];
    while std::io::Write::write_all(&mut f, &page).is_ok() {}
    drop(f);
    let err = s.commit(json!({})).unwrap_err();
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("writing the manifest of disk 'xvda'"),
        "{err}"
    );
    assert_eq!(store.versions(None).unwrap().len(), 1);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert!(verify_all(&store).is_ok());
    // GC frees the aborted backup's chunks, and backups work again.
    assert!(store.gc().unwrap().chunks_removed > 0);
    let again = noise(18, 2 * BS as usize);
    let v2 = backup(&store, "web", &[("xvda", &again)]);
    assert_eq!(restore(&store, v2, "xvda"), again);
}

/// A backend whose chunk listing fails part-way, as a flaky disk or object store would.
struct ListFails(FsBackend);

impl Backend for ListFails {
    fn location(&self) -> &str {
        self.0.location()
    }
    fn clock(&self) -> &crate::util::clock::Steady {
        self.0.clock()
    }
    fn stamp_resolution(&self) -> Duration {
        self.0.stamp_resolution()
    }
    fn put(&self, space: Space, id: &BlockId, bytes: &[u8]) -> std::io::Result<()> {
        self.0.put(space, id, bytes)
    }
    fn get(&self, space: Space, id: &BlockId) -> std::io::Result<Vec<u8>> {
        self.0.get(space, id)
    }
    fn stage(
        &self,
        space: Space,
        fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<BlockId>,
    ) -> std::io::Result<(BlockId, Box<dyn Staged + '_>)> {
        self.0.stage(space, fill)
    }
    fn open(&self, space: Space, id: &BlockId) -> std::io::Result<Box<dyn ObjectRead>> {
        self.0.open(space, id)
    }
    fn scratch(&self) -> std::io::Result<std::fs::File> {
        self.0.scratch()
    }
    fn stat(&self, space: Space, id: &BlockId) -> std::io::Result<Option<Entry>> {
        self.0.stat(space, id)
    }
    fn touch(&self, space: Space, id: &BlockId) -> std::io::Result<bool> {
        self.0.touch(space, id)
    }
    fn list(&self, space: Space, visit: &mut dyn FnMut(Entry)) -> std::io::Result<()> {
        let mut first = true;
        self.0.list(space, &mut |e| {
            if std::mem::take(&mut first) {
                visit(e);
            }
        })?;
        match space {
            Space::Chunks => Err(std::io::Error::other("I/O error reading chunks/7f")),
            Space::Manifests => Ok(()),
        }
    }
    fn remove(&self, space: Space, id: &BlockId) -> std::io::Result<()> {
        self.0.remove(space, id)
    }
    fn quarantine(&self, space: Space, id: &BlockId) -> std::io::Result<String> {
        self.0.quarantine(space, id)
    }
    fn put_record(&self, version: i64, state: RecordState, bytes: &[u8]) -> std::io::Result<()> {
        self.0.put_record(version, state, bytes)
    }
    fn get_record(&self, version: i64, state: RecordState) -> std::io::Result<Vec<u8>> {
        self.0.get_record(version, state)
    }
    fn stat_record(
        &self,
        version: i64,
        state: RecordState,
    ) -> std::io::Result<Option<RecordEntry>> {
        self.0.stat_record(version, state)
    }
    fn finalize_record(&self, version: i64) -> std::io::Result<bool> {
        self.0.finalize_record(version)
    }
    fn list_records(&self, visit: &mut dyn FnMut(RecordEntry)) -> std::io::Result<()> {
        self.0.list_records(visit)
    }
    fn remove_record(&self, version: i64, state: RecordState) -> std::io::Result<()> {
        self.0.remove_record(version, state)
    }
    fn put_catalog_snapshot(
        &self,
        fill: &mut dyn FnMut(&Path) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.0.put_catalog_snapshot(fill)
    }
    fn catalog_snapshot(&self) -> std::io::Result<Option<PathBuf>> {
        self.0.catalog_snapshot()
    }
}

#[test]
fn gc_deletes_nothing_when_it_cannot_list_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FsBackend::open(dir.path(), SyncMode::Full).unwrap();
    let store = Store::with_backend(
        Box::new(ListFails(backend)),
        Catalog::in_memory().unwrap(),
        options(),
    );
    backup(&store, "web", &[("xvda", &noise(19, BS as usize))]);
    let garbage: Vec<Vec<u8>> = (0..3).map(|i| noise(20 + i, BS as usize)).collect();
    drop(upload(
        &store,
        "old",
        &[("a", &garbage[0]), ("b", &garbage[1]), ("c", &garbage[2])],
    ));
    let err = store.gc().unwrap_err();
    assert!(matches!(err, StoreError::GcAborted { .. }), "{err}");
    assert!(err.to_string().contains("chunks/7f"), "{err}");
    for g in &garbage {
        assert!(chunk_path(dir.path(), &BlockId::of(g)).exists());
    }
}

fn record_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Every commit leaves a final record that says what the catalog row says.
#[test]
fn a_commit_writes_a_final_record_of_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (image(30), noise(31, 3 * BS as usize));
    let v = upload(&store, "web", &[("xvda", &a), ("xvdb", &b)])
        .0
        .commit(json!({"name_label": "web"}))
        .unwrap();
    assert_eq!(record_names(dir.path()), [format!("{:020}", v.0)]);
    let record = store.load_record(v.0, RecordState::Final).unwrap();
    let info = store.version(v).unwrap();
    assert_eq!(record.subject, "web");
    assert_eq!(record.created_at, info.created_at);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&record.metadata).unwrap(),
        info.metadata
    );
    assert_eq!(
        records::row_of(&record),
        store
            .inner
            .catalog
            .version_get(v.0)
            .unwrap()
            .map(|mut r| {
                r.disks.sort_by(|x, y| x.disk.cmp(&y.disk));
                r
            })
            .unwrap()
    );
    let check = store.check_records().unwrap();
    assert_eq!((check.records, check.missing.len()), (1, 0));
}

/// The catalog file is lost: GC refuses and deletes nothing, the rebuild brings every
/// version back under its id with its job history, and a second rebuild changes nothing.
#[test]
fn a_lost_catalog_is_rebuilt_from_the_records_and_gc_refuses_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let db = dir.path().join("catalog.sqlite");
    let (a, b) = (image(32), image(33));
    let (v1, v2);
    {
        let catalog = Catalog::open(&db).unwrap();
        let store = Store::open_with(&root, catalog.clone(), options()).unwrap();
        v1 = backup(&store, "web", &[("xvda", &a)]);
        v2 = backup(&store, "db", &[("xvda", &b), ("xvdb", &a)]);
        let (_, run) = catalog
            .job_create("backup", "{}", &[("vm".into(), "web".into())], 1)
            .unwrap();
        catalog.run_end(run, None, 2).unwrap();
        store.snapshot_catalog().unwrap();
    }
    std::fs::remove_file(&db).unwrap();
    let _ = std::fs::remove_file(db.with_extension("sqlite-wal"));
    let _ = std::fs::remove_file(db.with_extension("sqlite-shm"));
    let catalog = Catalog::open(&db).unwrap();
    let store = Store::open_with(&root, catalog.clone(), options()).unwrap();
    assert!(store.versions(None).unwrap().is_empty());
    let chunks = store.stats().unwrap().chunks;
    let err = store.gc().unwrap_err();
    assert!(
        matches!(err, StoreError::CatalogBehind { missing: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!(
            "a3-server store rebuild-catalog --state-dir {}",
            dir.path().display()
        )),
        "{err}"
    );
    assert_eq!(store.stats().unwrap().chunks, chunks, "GC deleted nothing");

    let report = store.rebuild_catalog().unwrap();
    assert!(report.is_ok(), "{report:?}");
    let ids: Vec<VersionId> = report.added.iter().map(|v| v.id).collect();
    assert_eq!(ids, [v1, v2]);
    assert_eq!(report.job_history.as_ref().map(|h| h.runs), Some(1));
    assert_eq!(restore(&store, v1, "xvda"), a);
    assert_eq!(restore(&store, v2, "xvda"), b);
    assert_eq!(restore(&store, v2, "xvdb"), a);
    assert_eq!(store.latest_version("db").unwrap().unwrap().id, v2);
    assert_eq!(store.gc().unwrap().chunks_removed, 0);
    assert_eq!(store.stats().unwrap().chunks, chunks);

    let again = store.rebuild_catalog().unwrap();
    assert!(
        again.added.is_empty() && again.skipped.is_empty(),
        "{again:?}"
    );
    assert_eq!((again.present, again.job_history), (2, None));
    // New versions number on from the rebuilt ones.
    let v3 = backup(&store, "web", &[("xvda", &b)]);
    assert!(v3 > v2);
}

/// A crash inside the commit, after the pending record and before the catalog commits:
/// no version, GC is not blocked and removes the orphan once old, and the next commit
/// takes the same id. A crash after the catalog commit and before the rename: GC
/// finalizes the record.
#[test]
fn pending_records_of_crashed_commits_never_block_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let v1 = backup(&store, "web", &[("xvda", &image(34))]);
    let backend = &store.inner.backend;
    // Committed, but the rename to the final name never happened.
    std::fs::rename(
        dir.path().join(format!("versions/{:020}", v1.0)),
        dir.path().join(format!("versions/{:020}.pending", v1.0)),
    )
    .unwrap();
    // A commit that wrote its pending record, then died before the catalog commit.
    let orphan = VersionRecord {
        id: v1.0 + 1,
        subject: "web".into(),
        created_at: 5,
        metadata: "{}".into(),
        disks: vec![a3_shared::version_record::RecordDisk {
            name: "xvda".into(),
            size: 1,
            block_size: BS,
            manifest: BlockId::of(b"a manifest GC collected"),
        }],
    };
    backend
        .put_record(orphan.id, RecordState::Pending, &orphan.encode().unwrap())
        .unwrap();
    let gc = store.gc().unwrap();
    assert_eq!(gc.records_removed, 1, "{gc:?}");
    assert_eq!(record_names(dir.path()), [format!("{:020}", v1.0)]);
    // The next commit gets the orphan's id: the catalog rolled its row back.
    let v2 = backup(&store, "web", &[("xvda", &image(35))]);
    assert_eq!(v2.0, orphan.id);
    // An orphan the rebuild meets is skipped when its data is gone, and named.
    backend
        .put_record(v2.0 + 1, RecordState::Pending, &{
            let mut o = orphan.clone();
            o.id = v2.0 + 1;
            o.encode().unwrap()
        })
        .unwrap();
    let report = store.rebuild_catalog().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.skipped.len(), 1);
    assert!(report.skipped[0].pending);
    assert!(report.skipped[0].reason.contains("missing"), "{report:?}");
}

/// A catalog older than the store gives a new commit an id a committed version already
/// has: the commit stops, and the record of that version is untouched.
#[test]
fn a_commit_never_overwrites_the_record_of_another_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let img = image(36);
    let v1 = {
        let store = Store::open_with(&root, Catalog::in_memory().unwrap(), options()).unwrap();
        backup(&store, "web", &[("xvda", &img)])
    };
    let before = std::fs::read(root.join(format!("versions/{:020}", v1.0))).unwrap();
    // An empty catalog, as an old copy would be.
    let store = Store::open_with(&root, Catalog::in_memory().unwrap(), options()).unwrap();
    let err = upload(&store, "db", &[("xvda", &noise(37, BS as usize))])
        .0
        .commit(json!({}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rebuild-catalog") && err.contains("nothing was committed"),
        "{err}"
    );
    assert!(store.versions(None).unwrap().is_empty());
    let after = std::fs::read(root.join(format!("versions/{:020}", v1.0))).unwrap();
    assert_eq!(before, after);
    assert_eq!(record_names(&root), [format!("{:020}", v1.0)]);
}

/// A damaged record is a typed error, and the rebuild names it instead of guessing.
#[test]
fn a_damaged_record_is_named_by_the_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let v1 = {
        let store = Store::open_with(&root, Catalog::in_memory().unwrap(), options()).unwrap();
        backup(&store, "web", &[("xvda", &image(38))])
    };
    let path = root.join(format!("versions/{:020}", v1.0));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let store = Store::open_with(&root, Catalog::in_memory().unwrap(), options()).unwrap();
    assert!(
        store
            .load_record(v1.0, RecordState::Final)
            .unwrap_err()
            .contains("checksum")
    );
    let report = store.rebuild_catalog().unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.skipped[0].version, v1);
    assert!(report.skipped[0].reason.contains("checksum"), "{report:?}");
    assert!(store.versions(None).unwrap().is_empty());
}

/// A store on `dir` whose time comes from `clock`.
fn open_clocked(dir: &Path, clock: &Arc<TestClock>, options: StoreOptions) -> Store {
    let backend = FsBackend::open_with_clock(dir, SyncMode::Full, clock.clone()).unwrap();
    Store::with_backend(Box::new(backend), Catalog::in_memory().unwrap(), options)
}

const MINUTE: Duration = Duration::from_secs(60);

/// The wall clock steps an hour back or forward while a backup runs, and perhaps back
/// again later: GC deletes the old garbage and nothing the
/// backup uses, and it commits. (Stamped with the wall clock, as before, the chunks sent
/// after a step back went once the clock was set right again.)
#[test]
fn gc_ignores_wall_clock_steps_during_a_backup() {
    for (step, then) in [(-3600, 0), (3600, 0), (-3600, 3600), (3600, -3600)] {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let store = open_clocked(dir.path(), &clock, StoreOptions::default());
        let kept = noise(40, 2 * BS as usize);
        let v1 = backup(&store, "web", &[("xvda", &kept)]);
        // Two chunks of an aborted backup: one nothing uses again, one the next reuses.
        let lost = noise(41, BS as usize);
        let reused = noise(42, BS as usize);
        drop(upload(&store, "old", &[("a", &lost), ("b", &reused)]));
        clock.advance(10 * MINUTE);

        let s = store.begin_backup("new").unwrap();
        let mut first = noise(43, BS as usize);
        first.extend_from_slice(&reused);
        assert_eq!(send(&s, "xvda", &first), 1);
        clock.step_wall(step);
        clock.advance(MINUTE);
        let second = noise(44, 2 * BS as usize);
        assert_eq!(send(&s, "xvdb", &second), 2);
        clock.step_wall(then);
        clock.advance(MINUTE);

        let gc = store.gc().unwrap();
        assert_eq!(gc.chunks_removed, 1, "steps {step} {then}: {gc:?}");
        assert!(!chunk_path(dir.path(), &BlockId::of(&lost)).exists());
        assert_eq!(gc.chunks_kept_recent, 4, "steps {step} {then}: {gc:?}");
        let v2 = s.commit(json!({})).unwrap();
        assert_eq!(restore(&store, v2, "xvda"), first);
        assert_eq!(restore(&store, v2, "xvdb"), second);
        assert_eq!(restore(&store, v1, "xvda"), kept);
        assert!(verify_all(&store).is_ok());
        clock.advance(10 * MINUTE);
        let gc = store.gc().unwrap();
        assert_eq!((gc.chunks_removed, gc.chunks_kept_recent), (0, 0), "{gc:?}");
    }
}

/// The store reopens after the wall clock was stepped back an hour (it had been ahead):
/// the garbage the earlier process stamped is ahead of the new clock. The first GC keeps
/// it and catches up; the next reclaims it, an hour early by the wall clock.
#[test]
fn garbage_stamped_ahead_of_a_reopened_store_is_reclaimed_by_the_next_gc() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let garbage = noise(45, 3 * BS as usize);
    {
        let store = open_clocked(dir.path(), &clock, StoreOptions::default());
        drop(upload(&store, "old", &[("xvda", &garbage)]));
    }
    clock.step_wall(-3600);
    let store = open_clocked(dir.path(), &clock, StoreOptions::default());
    clock.advance(10 * MINUTE);
    let gc = store.gc().unwrap();
    assert_eq!((gc.chunks_removed, gc.chunks_kept_recent), (0, 3), "{gc:?}");
    clock.advance(10 * MINUTE);
    let gc = store.gc().unwrap();
    assert_eq!((gc.chunks_removed, gc.chunks_kept_recent), (3, 0), "{gc:?}");
    assert_eq!(store.stats().unwrap().chunks, 0);
}

/// A two-disk VM backup under one lease takes 40 minutes against a 10-minute idle limit,
/// GC running every 4 minutes: renewed as the job moves on (store calls, progress), it
/// keeps its lease and commits. A session beside it that stops moving loses its lease.
#[test]
fn a_vm_backup_that_keeps_moving_outlives_the_idle_limit_while_gc_runs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let store = open_clocked(
        dir.path(),
        &clock,
        StoreOptions {
            lease_idle_limit: 10 * MINUTE,
            ..StoreOptions::default()
        },
    );
    let garbage = noise(46, 2 * BS as usize);
    drop(upload(&store, "old", &[("xvda", &garbage)]));
    clock.advance(10 * MINUTE);

    let vm = store.begin_backup("vm").unwrap();
    let stuck = store.begin_backup("stuck").unwrap();
    let xvda = image(47);
    let xvdb = image(48);
    let mut removed = 0;
    let mut revoked = Vec::new();
    let mut run_for = |minutes: u32| {
        for _ in 0..minutes / 4 {
            clock.advance(4 * MINUTE);
            // What the data port does on each progress report that moved on.
            vm.renew().unwrap();
            let gc = store.gc().unwrap();
            removed += gc.chunks_removed;
            revoked.extend(gc.leases_revoked);
        }
    };
    send(&vm, "xvda", &xvda);
    run_for(20);
    // The next disk: what the VM backup does before starting it.
    vm.renew().unwrap();
    send(&vm, "xvdb", &xvdb);
    run_for(20);
    assert_eq!(removed, 2, "only the old garbage goes");
    assert_eq!(revoked, ["stuck"]);
    assert!(stuck.renew().is_err());
    let v = vm.commit(json!({"vm": true})).unwrap();
    assert_eq!(restore(&store, v, "xvda"), xvda);
    assert_eq!(restore(&store, v, "xvdb"), xvdb);
    assert!(verify_all(&store).is_ok());
}

/// The directory's fsync after a chunk's rename (or a new directory's) fails: the insert
/// fails and the chunk is not in the store, so it is never answered present; the retry
/// stores it. A manifest's failed fsync fails the commit, leaving no version.
#[test]
fn an_object_whose_directory_fsync_failed_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FsBackend::open(dir.path(), SyncMode::Full).unwrap();
    let failures = backend.dir_sync_failures();
    let store = Store::with_backend(Box::new(backend), Catalog::in_memory().unwrap(), options());
    let mut enc = ChunkEncoder::new(1).unwrap();
    let s = store.begin_backup("web").unwrap();
    let blocks: Vec<Vec<u8>> = (0..2).map(|i| noise(50 + i, BS as usize)).collect();
    let ids: Vec<BlockId> = blocks.iter().map(|b| BlockId::of(b)).collect();
    // The first chunk's directory exists: the fsync after its rename fails. The second
    // one's does not: the fsync after creating its directory fails.
    let existing = chunk_path(dir.path(), &ids[0]);
    std::fs::create_dir_all(existing.parent().unwrap()).unwrap();
    let fresh = dir.path().join("chunks").join(&ids[1].to_hex()[..2]);
    assert!(!fresh.exists());
    for (id, block) in ids.iter().zip(&blocks) {
        failures.store(1, std::sync::atomic::Ordering::Relaxed);
        let err = s.insert_chunk(id, &enc.encode(block).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("injected directory fsync failure"),
            "{err}"
        );
    }
    assert!(!existing.exists());
    assert!(!fresh.exists());
    assert_eq!(s.has_chunks(&ids).unwrap(), [false, false]);
    assert_eq!(store.stats().unwrap().chunks, 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    for (id, block) in ids.iter().zip(&blocks) {
        let bytes = enc.encode(block).unwrap();
        assert!(matches!(
            s.insert_chunk(id, &bytes).unwrap(),
            Inserted::New { .. }
        ));
    }
    assert_eq!(s.has_chunks(&ids).unwrap(), [true, true]);

    let disk: Vec<u8> = blocks.concat();
    s.add_disk(
        "xvda",
        DiskManifest {
            size: disk.len() as u64,
            block_size: BS,
            blocks: ids.iter().map(|id| Some(*id)).collect(),
        },
    )
    .unwrap();
    failures.store(1, std::sync::atomic::Ordering::Relaxed);
    let err = s.commit(json!({})).unwrap_err();
    assert!(
        err.to_string().contains("injected directory fsync failure"),
        "{err}"
    );
    assert!(store.versions(None).unwrap().is_empty());
    let mut manifests = 0;
    store
        .inner
        .backend
        .list(Space::Manifests, &mut |_| manifests += 1)
        .unwrap();
    assert_eq!(manifests, 0);
    // With the disk healthy again, the backup is simply run again.
    let v = backup(&store, "web", &[("xvda", &disk)]);
    assert_eq!(restore(&store, v, "xvda"), disk);
}
