//! Data path round trips: an A3 and an agent as processes, disks backed up over QUIC and
//! restored bit-exact.

mod datapath_util;

use datapath_util::{A3, assert_same, cbt_bitmap, image, scratch, start_agent};

const MIB: usize = 1 << 20;

/// Random images with zero runs, duplicated regions and sizes that are not a multiple of
/// the block size back up and restore bit-exact; a re-backup sends nothing new.
#[test]
fn random_images_round_trip_bit_exact() {
    let dir = scratch();
    let a3 = A3::start(&dir.path().join("a3"), "127.0.1.201:0");
    let cfg = a3.enroll("rt-1", dir.path());
    let _agent = start_agent(&a3, "rt-1", &cfg);
    for (seed, size) in [(1u64, 9 * MIB + 12345), (2, 1000), (3, 3 * MIB), (4, 0)] {
        let img = image(seed, size);
        let src = dir.path().join(format!("disk{seed}.img"));
        std::fs::write(&src, &img).unwrap();
        let disk = format!("disk{seed}");
        let v = a3.backup("rt-1", &src, &disk, None);
        let out = dir.path().join(format!("restored{seed}.img"));
        let r = a3.restore("rt-1", &v, &out);
        assert!(
            r.status.success(),
            "restore: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_same(&disk, &std::fs::read(&out).unwrap(), &img);
        // The same image again: a new, equal version.
        let v2 = a3.backup("rt-1", &src, &disk, None);
        assert_ne!(v, v2);
        assert_eq!(a3.versions(&disk).len(), 2);
    }
}

/// Two versions, the second by CBT: each restores bit-exact, and the second really takes
/// unmarked blocks from the base (a change the bitmap does not mark is not picked up, as
/// XAPI's bitmap is authoritative).
#[test]
fn cbt_incremental_versions_each_restore_bit_exact() {
    let dir = scratch();
    let a3 = A3::start(&dir.path().join("a3"), "127.0.1.202:0");
    let cfg = a3.enroll("cbt-1", dir.path());
    let _agent = start_agent(&a3, "cbt-1", &cfg);
    let size = 8 * MIB + 4096;
    let v1_img = image(7, size);
    let src = dir.path().join("disk.img");
    std::fs::write(&src, &v1_img).unwrap();
    let v1 = a3.backup("cbt-1", &src, "vm-disk", None);

    // Scattered writes, each marked in the bitmap; one more write left unmarked.
    let mut v2_img = v1_img.clone();
    let marked = [0u64, 17, 18, 64, 127];
    for &g in &marked {
        let at = (g as usize) * (64 << 10) + 100;
        v2_img[at..at + 3000].fill(0xA5);
    }
    let unmarked_at = 5 * MIB + 7;
    let mut on_disk = v2_img.clone();
    on_disk[unmarked_at] ^= 0xFF;
    std::fs::write(&src, &on_disk).unwrap();
    let bitmap = dir.path().join("cbt.b64");
    std::fs::write(&bitmap, cbt_bitmap(size as u64, &marked)).unwrap();
    let v2 = a3.backup("cbt-1", &src, "vm-disk", Some(&bitmap));

    for (v, want) in [(&v1, &v1_img), (&v2, &v2_img)] {
        let out = dir.path().join(format!("{v}.out"));
        let r = a3.restore("cbt-1", v, &out);
        assert!(
            r.status.success(),
            "restore {v}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_same(&format!("version {v}"), &std::fs::read(&out).unwrap(), want);
    }
}
