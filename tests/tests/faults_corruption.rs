//! The corruption sweep: faults injected one at a time into a small real store (chunks,
//! manifests, version records, catalog rows), each followed by a whole-store verify that
//! must name exactly what the fault damaged (version, disk and offset for a chunk), and
//! nothing else. After each fault the store is put back as it was. A fault that leaves a
//! chunk decoding to its id (a bit no decoder reads) loses nothing and is counted as
//! harmless, after checking that the block still decodes.
//!
//! `A3_FAULTS` sets the number of faults (default 400, what `cargo xtask test` runs);
//! `cargo xtask faults` runs 12,000. The last line printed is `FAULTS {json}` with the
//! counts.

mod datapath_util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use a3_server::catalog::Catalog;
use a3_server::store::{
    DiskManifest, Store, StoreOptions, SyncMode, VerifyReport, VerifyScope, VersionId,
};
use a3_shared::chunk::{BlockId, ChunkEncoder, is_zero};
use datapath_util::Rng;

const BS: usize = 64 << 10;

/// A deterministic value below `n`.
fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next() % n.max(1)
}

/// A disk image: `blocks` blocks of noise, some zero, some repeated across disks.
fn image(seed: u64, blocks: usize) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut img = vec![0u8; blocks * BS - 1000];
    for (i, block) in img.chunks_mut(BS).enumerate() {
        match i % 7 {
            3 => {}                // zero
            5 => block.fill(0x5A), // the same block on every disk: dedup
            _ => block.iter_mut().for_each(|b| *b = rng.next() as u8),
        }
    }
    img
}

/// One disk of one version: (version, subject, disk, manifest id, block ids).
type StoredDisk = (VersionId, String, String, BlockId, Vec<Option<BlockId>>);

/// What the store holds, to know what each fault damages.
struct Layout {
    disks: Vec<StoredDisk>,
    chunks: Vec<BlockId>,
    manifests: Vec<BlockId>,
    versions: Vec<VersionId>,
}

fn options() -> StoreOptions {
    StoreOptions {
        sync: SyncMode::Off,
        ..StoreOptions::default()
    }
}

fn open(dir: &Path) -> Store {
    let catalog = Catalog::open(&dir.join("catalog.sqlite")).unwrap();
    Store::open_with(&dir.join("store"), catalog, options()).unwrap()
}

/// Three VMs, two versions each, two disks each; the second version changes some blocks.
fn build(dir: &Path) -> Layout {
    let store = open(dir);
    let mut enc = ChunkEncoder::new(1).unwrap();
    for vm in 0..3u64 {
        for round in 0..2u64 {
            let s = store.begin_backup(&format!("vm-{vm}")).unwrap();
            for disk in 0..2u64 {
                let mut img = image(vm * 10 + disk + 1, 12);
                if round == 1 {
                    img[..BS].copy_from_slice(&image(100 + vm * 10 + disk, 2)[..BS]);
                }
                let blocks: Vec<Option<BlockId>> = img
                    .chunks(BS)
                    .map(|b| (!is_zero(b)).then(|| BlockId::of(b)))
                    .collect();
                for b in img.chunks(BS).filter(|b| !is_zero(b)) {
                    s.insert_chunk(&BlockId::of(b), &enc.encode(b).unwrap())
                        .unwrap();
                }
                let m = DiskManifest {
                    size: img.len() as u64,
                    block_size: BS as u32,
                    blocks,
                };
                s.add_disk(&format!("xvd{}", (b'a' + disk as u8) as char), m)
                    .unwrap();
            }
            s.commit(serde_json::json!({ "round": round })).unwrap();
        }
    }
    let mut layout = Layout {
        disks: Vec::new(),
        chunks: Vec::new(),
        manifests: Vec::new(),
        versions: Vec::new(),
    };
    let mut chunks = BTreeSet::new();
    let mut manifests = BTreeSet::new();
    let catalog = Catalog::open(&dir.join("catalog.sqlite")).unwrap();
    for v in store.versions(None).unwrap() {
        layout.versions.push(v.id);
        for d in catalog.version_get(v.id.0).unwrap().unwrap().disks {
            let m = store.manifest(v.id, &d.disk).unwrap();
            let digest: BlockId = d.manifest.parse().unwrap();
            chunks.extend(m.blocks.iter().flatten().copied());
            manifests.insert(digest);
            layout
                .disks
                .push((v.id, v.subject.clone(), d.disk, digest, m.blocks));
        }
    }
    layout.chunks = chunks.into_iter().collect();
    layout.manifests = manifests.into_iter().collect();
    layout
}

fn object_path(dir: &Path, space: &str, id: &BlockId) -> PathBuf {
    let hex = id.to_hex();
    match space {
        "chunks" => dir
            .join("store/chunks")
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(hex),
        _ => dir.join("store/manifests").join(&hex[..2]).join(hex),
    }
}

fn record_path(dir: &Path, v: VersionId) -> PathBuf {
    dir.join("store/versions").join(format!("{:020}", v.0))
}

/// A fault to a file's bytes. `None` when it would change nothing (zeroing zeros).
fn damage(rng: &mut Rng, bytes: &[u8]) -> Option<(&'static str, Option<Vec<u8>>)> {
    let len = bytes.len() as u64;
    match below(rng, 4) {
        0 => {
            let mut b = bytes.to_vec();
            let at = below(rng, len) as usize;
            b[at] ^= 1 << below(rng, 8);
            Some(("bit flip", Some(b)))
        }
        1 => Some((
            "truncation",
            Some(bytes[..below(rng, len) as usize].to_vec()),
        )),
        2 => {
            let mut b = bytes.to_vec();
            let start = below(rng, len) as usize;
            let end = (start + 1 + below(rng, 4096) as usize).min(b.len());
            if b[start..end].iter().all(|&x| x == 0) {
                return None;
            }
            b[start..end].fill(0);
            Some(("zeroed range", Some(b)))
        }
        _ => Some(("deletion", None)),
    }
}

/// What a fault must make verify report, as the set of lines it should name.
type Names = BTreeSet<String>;

fn named(report: &VerifyReport) -> Names {
    let mut out = Names::new();
    for b in &report.bad_blocks {
        out.insert(format!(
            "block {} {} {} {} {}",
            b.version.0, b.subject, b.disk, b.offset, b.chunk
        ));
    }
    for m in &report.bad_manifests {
        out.insert(format!("manifest {} {}", m.version.0, m.disk));
    }
    for r in &report.bad_records {
        out.insert(format!("record {}", r.version.0));
    }
    for o in &report.bad_unreferenced {
        out.insert(format!("unused {}", o.chunk));
    }
    out
}

#[derive(Default, Debug)]
struct Tally {
    injected: u64,
    detected: u64,
    /// Faults that changed a chunk's file but not its block (it still decodes to its
    /// id): nothing to detect, nothing lost.
    harmless: u64,
    missed: u64,
    false_positives: u64,
    by_target: std::collections::BTreeMap<&'static str, u64>,
}

/// Puts back a file a fault changed, and removes the quarantined copies verify made.
fn put_back(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let dir = path.parent().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".bad") {
            std::fs::remove_file(p).unwrap();
        }
    }
}

#[test]
fn every_injected_corruption_is_named_and_nothing_else() {
    let faults: u64 = std::env::var("A3_FAULTS")
        .ok()
        .map(|v| v.parse().expect("A3_FAULTS is a number"))
        .unwrap_or(400);
    let scratch = tempfile::Builder::new()
        .prefix("a3-faults-")
        .tempdir()
        .unwrap();
    let dir = scratch.path();
    let layout = build(dir);
    let clean = open(dir).verify(VerifyScope::All, &mut |_| {}).unwrap();
    assert!(
        clean.is_ok(),
        "the pristine store does not verify: {clean:?}"
    );

    let mut rng = Rng(0x5EED_FA17);
    let mut t = Tally::default();
    let catalog_columns = [
        "created_at",
        "metadata",
        "subject",
        "size",
        "block_size",
        "manifest",
    ];
    while t.injected < faults {
        let mut expect = Names::new();
        let mut chunk = None;
        let mut intact = false;
        let target = ["chunk", "manifest", "record", "catalog row"][below(&mut rng, 4) as usize];
        let undo: Box<dyn FnOnce()> = match target {
            "chunk" | "manifest" | "record" => {
                let path = match target {
                    "chunk" => {
                        let id =
                            layout.chunks[below(&mut rng, layout.chunks.len() as u64) as usize];
                        for (v, subject, disk, _, blocks) in &layout.disks {
                            for (i, b) in blocks.iter().enumerate() {
                                if *b == Some(id) {
                                    expect.insert(format!(
                                        "block {} {subject} {disk} {} {}",
                                        v.0,
                                        (i * BS) as u64,
                                        id.to_hex()
                                    ));
                                }
                            }
                        }
                        chunk = Some(id);
                        object_path(dir, "chunks", &id)
                    }
                    "manifest" => {
                        let id = layout.manifests
                            [below(&mut rng, layout.manifests.len() as u64) as usize];
                        for (v, _, disk, m, _) in &layout.disks {
                            if *m == id {
                                expect.insert(format!("manifest {} {disk}", v.0));
                            }
                        }
                        object_path(dir, "manifests", &id)
                    }
                    _ => {
                        let v =
                            layout.versions[below(&mut rng, layout.versions.len() as u64) as usize];
                        expect.insert(format!("record {}", v.0));
                        record_path(dir, v)
                    }
                };
                let original = std::fs::read(&path).unwrap();
                let Some((_, damaged)) = damage(&mut rng, &original) else {
                    continue;
                };
                match &damaged {
                    Some(b) => std::fs::write(&path, b).unwrap(),
                    None => std::fs::remove_file(&path).unwrap(),
                }
                // A bit no decoder reads (zstd's "unused" frame-header bit) changes the
                // file but not the block: it still decodes to its id, so it restores
                // bit-exact.
                if let (Some(id), Some(b)) = (chunk, &damaged) {
                    intact = a3_shared::chunk::decode(&id, b).is_ok();
                }
                Box::new(move || put_back(&path, &original))
            }
            _ => {
                // A catalog row altered behind the A3's back: the store's record disagrees.
                let v = layout.versions[below(&mut rng, layout.versions.len() as u64) as usize];
                let column =
                    catalog_columns[below(&mut rng, catalog_columns.len() as u64) as usize];
                expect.insert(format!("record {}", v.0));
                let db = rusqlite::Connection::open(dir.join("catalog.sqlite")).unwrap();
                let (table, key) = match column {
                    "size" | "block_size" | "manifest" => ("version_disks", "version"),
                    _ => ("versions", "id"),
                };
                let original: rusqlite::types::Value = db
                    .query_row(
                        &format!("SELECT {column} FROM {table} WHERE {key} = ?1 LIMIT 1"),
                        [v.0],
                        |r| r.get(0),
                    )
                    .unwrap();
                let altered: rusqlite::types::Value = match &original {
                    rusqlite::types::Value::Integer(n) => {
                        rusqlite::types::Value::Integer(n ^ (1 << below(&mut rng, 20)))
                    }
                    rusqlite::types::Value::Text(s) => {
                        let mut b = s.clone().into_bytes();
                        let at = below(&mut rng, b.len() as u64) as usize;
                        // Stay valid text, and a valid digest where it is one.
                        b[at] = if b[at] == b'0' { b'1' } else { b'0' };
                        rusqlite::types::Value::Text(String::from_utf8(b).unwrap())
                    }
                    other => panic!("unexpected catalog value {other:?}"),
                };
                if column == "manifest" {
                    // The row now names a manifest that is not there.
                    for (vv, _, disk, _, _) in &layout.disks {
                        if *vv == v && disk == "xvda" {
                            expect.insert(format!("manifest {} {disk}", v.0));
                        }
                    }
                }
                let sql = match table {
                    "version_disks" => format!(
                        "UPDATE version_disks SET {column} = ?1 WHERE version = ?2 AND disk = 'xvda'"
                    ),
                    _ => format!("UPDATE versions SET {column} = ?1 WHERE id = ?2"),
                };
                let version = v.0;
                let set = move |val: rusqlite::types::Value| {
                    db.execute(&sql, rusqlite::params![val, version]).unwrap();
                };
                set(altered);
                Box::new(move || set(original))
            }
        };
        t.injected += 1;
        *t.by_target.entry(target).or_default() += 1;
        let report = open(dir).verify(VerifyScope::All, &mut |_| {}).unwrap();
        let got = named(&report);
        if expect.is_subset(&got) {
            t.detected += 1;
        } else if intact && got.is_empty() {
            t.harmless += 1;
        } else {
            t.missed += 1;
            eprintln!("MISSED {target}: expected {expect:?}, got {got:?}");
        }
        let extra = got.difference(&expect).count() as u64;
        if extra > 0 {
            t.false_positives += extra;
            eprintln!(
                "FALSE POSITIVE after a {target} fault: {:?}",
                got.difference(&expect)
            );
        }
        undo();
    }
    let after = open(dir).verify(VerifyScope::All, &mut |_| {}).unwrap();
    assert!(
        after.is_ok(),
        "the store does not verify once every fault is undone"
    );
    println!(
        "FAULTS {}",
        serde_json::json!({
            "faults_injected": t.injected,
            "detected": t.detected,
            "harmless": t.harmless,
            "missed": t.missed,
            "false_positives": t.false_positives,
            "by_target": t.by_target,
        })
    );
    assert_eq!(t.missed, 0, "undetected faults: {t:?}");
    assert_eq!(t.false_positives, 0, "false positives: {t:?}");
}
