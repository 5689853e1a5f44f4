//! `PUT /import`'s importer, in process: the ABD template's XVA (built as `cargo xtask
//! image` builds it) becomes a VM with its disk, VBD and VIF; a corrupt or incomplete XVA
//! is refused with xapi's error and leaves nothing behind.

mod common;

use a3_shared::xapi_wire::{Struct, Value};
use a3_shared::xva::{CHUNK_SIZE, XvaWriter};
use abd_image::template::{DISK_REF, HIDE_KEY, VERSION_KEY, template_ova};
use common::Pool;

/// A 3 MiB disk: data, a zero chunk, then a partly written last chunk.
fn disk() -> Vec<u8> {
    let mut d = vec![0u8; 3 * CHUNK_SIZE as usize];
    for (i, b) in d[..CHUNK_SIZE as usize].iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    d[2 * CHUNK_SIZE as usize + 7..2 * CHUNK_SIZE as usize + 12].copy_from_slice(b"tail!");
    d
}

fn xva_of(ova: &Value, d: &[u8]) -> Vec<u8> {
    let mut w = XvaWriter::new(Vec::new(), ova).unwrap();
    w.write_disk(DISK_REF, d.len() as u64, |off, buf| {
        buf.copy_from_slice(&d[off as usize..off as usize + buf.len()]);
        Ok(())
    })
    .unwrap();
    w.finish().unwrap()
}

/// How many objects of each class the pool has, and the VDI files on disk.
async fn inventory(pool: &Pool) -> (Vec<usize>, usize) {
    let mut counts = vec![];
    for class in ["VM", "VDI", "VBD", "VIF"] {
        let all = pool.ok(&format!("{class}.get_all"), vec![]).await;
        counts.push(all.as_array().unwrap().len());
    }
    let files = std::fs::read_dir(pool.dir.path().join("vdis")).map_or(0, |d| d.count());
    (counts, files)
}

async fn import(pool: &Pool, sr: &str, bytes: Vec<u8>) -> Result<Vec<String>, Vec<String>> {
    let shared = pool.sim.shared().clone();
    let sr = sr.to_owned();
    tokio::task::spawn_blocking(move || xapi_sim::import_xva::import_from(shared, &sr, &bytes[..]))
        .await
        .unwrap()
        .map_err(|e| std::iter::once(e.code.to_owned()).chain(e.params).collect())
}

async fn default_sr(pool: &Pool) -> String {
    let pools = pool.ok("pool.get_all", vec![]).await;
    let p = pools.as_array().unwrap()[0].as_str().unwrap().to_owned();
    let sr = pool.ok("pool.get_default_SR", vec![p.into()]).await;
    sr.as_str().unwrap().to_owned()
}

fn field<'a>(rec: &'a Value, f: &str) -> &'a Value {
    rec.get(f).unwrap_or_else(|| panic!("no field {f}"))
}

#[tokio::test]
async fn the_abd_template_imports_as_a_hidden_template_with_its_disk() {
    let pool = Pool::start(2, 1).await;
    let sr = default_sr(&pool).await;
    let d = disk();
    let vms = import(&pool, &sr, xva_of(&template_ova(d.len() as u64), &d))
        .await
        .unwrap();
    assert_eq!(vms.len(), 1);
    let vm = pool.ok("VM.get_record", vec![vms[0].clone().into()]).await;
    assert_eq!(vm.get_str("name_label"), Some("ABD template"));
    assert_eq!(field(&vm, "is_a_template").as_bool(), Some(true));
    assert_eq!(vm.get_str("power_state"), Some("Halted"));
    assert_eq!(field(&vm, "memory_static_max").as_i64(), Some(128 << 20));
    assert_eq!(field(&vm, "memory_dynamic_min").as_i64(), Some(128 << 20));
    assert_eq!(field(&vm, "VCPUs_max").as_i64(), Some(1));
    assert_eq!(vm.get_str("HVM_boot_policy"), Some("BIOS order"));
    assert_eq!(field(&vm, "HVM_boot_params").get_str("order"), Some("c"));
    assert_eq!(
        field(&vm, "platform").get_str("device-model"),
        Some("qemu-upstream-compat")
    );
    let other = field(&vm, "other_config");
    assert_eq!(other.get_str(HIDE_KEY), Some("true"));
    assert!(other.get_str(VERSION_KEY).is_some());

    let vbds = field(&vm, "VBDs").as_array().unwrap();
    assert_eq!(vbds.len(), 1);
    let vbd = pool.ok("VBD.get_record", vec![vbds[0].clone()]).await;
    assert_eq!(vbd.get_str("userdevice"), Some("0"));
    assert_eq!(field(&vbd, "bootable").as_bool(), Some(true));
    let vdi_ref = vbd.get_str("VDI").unwrap().to_owned();
    let vdi = pool
        .ok("VDI.get_record", vec![vdi_ref.clone().into()])
        .await;
    assert_eq!(vdi.get_str("SR"), Some(sr.as_str()));
    assert_eq!(vdi.get_str("name_label"), Some("ABD boot disk"));
    assert_eq!(vdi.get_str("type"), Some("system"));
    assert_eq!(field(&vdi, "virtual_size").as_i64(), Some(d.len() as i64));
    let uuid = vdi.get_str("uuid").unwrap();
    let content = pool
        .sim
        .shared()
        .lock()
        .disks
        .read(uuid, 0, d.len() as u64)
        .unwrap();
    assert!(content == d, "the disk's bytes are the XVA's");

    let vifs = field(&vm, "VIFs").as_array().unwrap();
    assert_eq!(vifs.len(), 1);
    let vif = pool.ok("VIF.get_record", vec![vifs[0].clone()]).await;
    let net = pool
        .ok(
            "network.get_record",
            vec![vif.get_str("network").unwrap().into()],
        )
        .await;
    assert_eq!(
        net.get_str("bridge"),
        Some("xenbr0"),
        "the management network"
    );
}

#[tokio::test]
async fn a_corrupt_chunk_is_refused_and_nothing_is_left() {
    let pool = Pool::start(1, 1).await;
    let sr = default_sr(&pool).await;
    let before = inventory(&pool).await;
    let d = disk();
    let mut bytes = xva_of(&template_ova(d.len() as u64), &d);
    // Flip a byte inside the first chunk's data (the first run of the disk's pattern).
    let at = bytes.windows(4).position(|w| w == [1, 1, 3, 3]).unwrap();
    bytes[at + 4096] ^= 0x40;
    let err = import(&pool, &sr, bytes).await.unwrap_err();
    assert_eq!(err, ["IMPORT_ERROR_SOME_CHECKSUMS_FAILED"]);
    assert_eq!(inventory(&pool).await, before);
}

#[tokio::test]
async fn incomplete_or_inconsistent_xvas_are_refused_and_nothing_is_left() {
    let pool = Pool::start(1, 1).await;
    let sr = default_sr(&pool).await;
    let before = inventory(&pool).await;
    let d = disk();
    let good = xva_of(&template_ova(d.len() as u64), &d);

    // Cut in the middle of the disk.
    let err = import(&pool, &sr, good[..good.len() / 2].to_vec())
        .await
        .unwrap_err();
    assert!(err[0].starts_with("IMPORT_ERROR"), "{err:?}");
    assert_eq!(inventory(&pool).await, before);

    // A VBD naming a VDI the archive does not describe.
    let mut ova = template_ova(d.len() as u64);
    if let Value::Struct(root) = &mut ova
        && let Some(Value::Array(objects)) = root.get_mut("objects")
    {
        objects.retain(|o| o.get_str("class") != Some("VDI"));
    }
    let err = import(&pool, &sr, xva_of(&ova, &d)).await.unwrap_err();
    assert_eq!(err, ["IMPORT_ERROR_FAILED_TO_FIND_OBJECT", "Ref:2"]);
    assert_eq!(inventory(&pool).await, before);

    // A record without a field the datamodel gives no default (xapi's import.ml reads it
    // with API.vM_t_of_rpc): refused with xapi's message.
    let mut ova = template_ova(d.len() as u64);
    if let Value::Struct(root) = &mut ova
        && let Some(Value::Array(objects)) = root.get_mut("objects")
        && let Some(Value::Struct(o)) = objects
            .iter_mut()
            .find(|o| o.get_str("class") == Some("VM"))
        && let Some(Value::Struct(vm)) = o.get_mut("snapshot")
    {
        vm.remove("user_version");
    }
    let err = import(&pool, &sr, xva_of(&ova, &d)).await.unwrap_err();
    assert_eq!(
        err,
        [
            "IMPORT_ERROR",
            "INTERNAL_ERROR: [ Failure(\"Field user_version not present in rpc\") ]"
        ]
    );
    assert_eq!(inventory(&pool).await, before);

    // A chunk past the disk's declared size.
    let ova = template_ova(CHUNK_SIZE);
    let err = import(&pool, &sr, xva_of(&ova, &d)).await.unwrap_err();
    assert_eq!(err[0], "IMPORT_ERROR");
    assert!(err[1].contains("past its virtual_size"), "{err:?}");
    assert_eq!(inventory(&pool).await, before);

    // An old export format.
    let mut ova = template_ova(d.len() as u64);
    if let Value::Struct(root) = &mut ova {
        let mut v = Struct::new();
        v.insert("export_vsn".into(), Value::from("1"));
        root.insert("version".into(), Value::Struct(v));
    }
    let err = import(&pool, &sr, xva_of(&ova, &d)).await.unwrap_err();
    assert!(err[1].contains("export_vsn 1"), "{err:?}");

    // Not a tar at all.
    let err = import(&pool, &sr, b"hello".repeat(300)).await.unwrap_err();
    assert_eq!(err[0], "IMPORT_ERROR");
    assert_eq!(inventory(&pool).await, before);
}
