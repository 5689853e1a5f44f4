//! The data path and the store together: global dedup, and corruption found on restore.

mod datapath_util;

use a3_e2e::chunk_files;
use datapath_util::{A3, Rng, assert_same, cbt_bitmap, chunk_path, scratch, start_agent};

const MIB: usize = 1 << 20;
/// The data path's block size: what one chunk covers.
const BS: usize = a3_shared::proto::DEFAULT_BLOCK_SIZE as usize;

/// A block shared by two different disks is stored once: backing up the second disk adds
/// only its own blocks.
#[test]
fn block_shared_by_two_disks_is_stored_once() {
    let dir = scratch();
    let state = dir.path().join("a3");
    let a3 = A3::start(&state, "127.0.1.207:0");
    let cfg = a3.enroll("dedup-1", dir.path());
    let _agent = start_agent(&a3, "dedup-1", &cfg);

    let mut rng = Rng(21);
    let mut a = vec![0u8; 3 * MIB];
    rng.fill(&mut a);
    let mut b = vec![0u8; 3 * MIB];
    rng.fill(&mut b);
    b[BS..2 * BS].copy_from_slice(&a[BS..2 * BS]); // the shared block
    let (pa, pb) = (dir.path().join("a.img"), dir.path().join("b.img"));
    std::fs::write(&pa, &a).unwrap();
    std::fs::write(&pb, &b).unwrap();

    let va = a3.backup("dedup-1", &pa, "disk-a", None);
    let blocks = 3 * MIB / BS;
    assert_eq!(chunk_files(&state).len(), blocks);
    let vb = a3.backup("dedup-1", &pb, "disk-b", None);
    assert_eq!(
        chunk_files(&state).len(),
        2 * blocks - 1,
        "the shared block was stored twice"
    );
    assert!(chunk_path(&state, &a[BS..2 * BS]).exists());

    for (v, want) in [(&va, &a), (&vb, &b)] {
        let out = dir.path().join(format!("{v}.out"));
        let r = a3.restore("dedup-1", v, &out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_same(v, &std::fs::read(&out).unwrap(), want);
    }
}

/// A corrupted chunk file: restore fails naming the version and the block's offset, and
/// writes nothing wrong (the block stays a hole); the chunk is quarantined, the next backup
/// stores it again, and both versions restore.
#[test]
fn corrupted_chunk_is_reported_by_restore_and_never_written() {
    let dir = scratch();
    let state = dir.path().join("a3");
    let a3 = A3::start(&state, "127.0.1.208:0");
    let cfg = a3.enroll("corrupt-1", dir.path());
    let _agent = start_agent(&a3, "corrupt-1", &cfg);

    let mut img = vec![0u8; 4 * MIB + 777];
    Rng(31).fill(&mut img);
    let src = dir.path().join("disk.img");
    std::fs::write(&src, &img).unwrap();
    let v1 = a3.backup("corrupt-1", &src, "disk", None);

    // Flip one byte in the payload of block 2's chunk.
    let victim = 2 * BS;
    let path = chunk_path(&state, &img[victim..victim + BS]);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let out = dir.path().join("restored.img");
    let r = a3.restore("corrupt-1", &v1, &out);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success(),
        "restore of a corrupt version succeeded"
    );
    assert!(
        err.contains(&format!("version {v1}")) && err.contains(&format!("offset {victim}")),
        "the error does not name the version and offset: {err}"
    );
    let restored = std::fs::read(&out).unwrap_or_default();
    if restored.len() >= victim + BS {
        assert!(
            restored[victim..victim + BS].iter().all(|&b| b == 0),
            "bytes of the corrupt block were written"
        );
    }

    // The bad chunk is out of dedup: the next backup uploads it again.
    let v2 = a3.backup("corrupt-1", &src, "disk", None);
    for v in [&v1, &v2] {
        let out = dir.path().join(format!("{v}.out"));
        let r = a3.restore("corrupt-1", v, &out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_same(v, &std::fs::read(&out).unwrap(), &img);
    }
}

/// A CBT incremental takes unchanged blocks from its base without asking the store; when a
/// base chunk has since been found bad (quarantined), the A3 has the agent read that block
/// again, so the new version is complete and restores bit-exact.
#[test]
fn cbt_incremental_rereads_a_base_block_found_bad() {
    let dir = scratch();
    let state = dir.path().join("a3");
    let a3 = A3::start(&state, "127.0.1.209:0");
    let cfg = a3.enroll("requar-1", dir.path());
    let _agent = start_agent(&a3, "requar-1", &cfg);

    let mut img = vec![0u8; 4 * MIB];
    Rng(41).fill(&mut img);
    let src = dir.path().join("disk.img");
    std::fs::write(&src, &img).unwrap();
    a3.backup("requar-1", &src, "disk", None);

    // Damage block 1's chunk, and let verify find and quarantine it.
    let victim = BS;
    let path = chunk_path(&state, &img[victim..victim + BS]);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let verify = a3.cli(&["store", "verify"]);
    assert!(!verify.status.success(), "verify missed the damage");
    assert!(!path.exists(), "the bad chunk was not quarantined");

    // Nothing changed since the base, by CBT.
    let cbt = dir.path().join("cbt.b64");
    std::fs::write(&cbt, cbt_bitmap(img.len() as u64, &[])).unwrap();
    let v2 = a3.backup("requar-1", &src, "disk", Some(&cbt));
    let out = dir.path().join("v2.out");
    let r = a3.restore("requar-1", &v2, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same(&v2, &std::fs::read(&out).unwrap(), &img);
    assert!(
        path.exists(),
        "the incremental did not store the block again"
    );
}
