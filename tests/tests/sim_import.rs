//! `PUT /import` of the ABD template's XVA over HTTP onto an NFS SR served by the A3's NFS
//! server: the VM's disk becomes a VHD file on the export and the task's result is the new
//! VM ref, as xapi does; a corrupt chunk fails the task and leaves nothing, on the pool or
//! on the export.

mod xapi_support;

use std::net::IpAddr;
use std::time::Duration;

use a3_server::sr::EXPORT;
use a3_server::xapi::Session;
use a3_shared::xapi_wire::{Value, xmlrpc};
use a3_shared::xva::{CHUNK_SIZE, XvaWriter};
use abd_image::template::{DISK_REF, HIDE_KEY, template_ova};
use tokio_util::sync::CancellationToken;
use xapi_support::SimPool;

fn xva(disk: &[u8]) -> Vec<u8> {
    let mut w = XvaWriter::new(Vec::new(), &template_ova(disk.len() as u64)).unwrap();
    w.write_disk(DISK_REF, disk.len() as u64, |off, buf| {
        buf.copy_from_slice(&disk[off as usize..off as usize + buf.len()]);
        Ok(())
    })
    .unwrap();
    w.finish().unwrap()
}

async fn nfs_sr(session: &Session, server: &str) -> (String, String) {
    let pools = session.call("pool.get_all", &[]).await.unwrap();
    let pool = pools.as_array().unwrap()[0].clone();
    let master = session.call("pool.get_master", &[pool]).await.unwrap();
    let config: Value = [("server", server), ("serverpath", EXPORT)]
        .into_iter()
        .collect();
    let args = [
        master,
        config,
        Value::from("0"),
        Value::from("Alike_SR"),
        Value::from(""),
        Value::from("nfs"),
        Value::from("user"),
        Value::Bool(true),
        Value::empty_struct(),
    ];
    let sr = session.call("SR.create", &args).await.unwrap();
    let uuid = session
        .call("SR.get_uuid", std::slice::from_ref(&sr))
        .await
        .unwrap();
    (
        sr.as_str().unwrap().to_owned(),
        uuid.as_str().unwrap().to_owned(),
    )
}

/// PUTs `body` to `/import` with a task made by `task.create`; the finished task record.
async fn import(sim: &SimPool, session: &Session, sr: &str, body: Vec<u8>) -> Value {
    let task = session
        .call("task.create", &[Value::from("import"), Value::from("")])
        .await
        .unwrap();
    let task = task.as_str().unwrap().to_owned();
    let (tls, _) = a3_server::xapi::tls::pinned_client_config(None);
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let sid = session.session_ref().await;
    let url = format!(
        "https://{}/import?session_id={sid}&sr_id={sr}&task_id={task}",
        sim.endpoint(0)
    );
    let resp = http.put(url).body(body).send().await.unwrap();
    assert_eq!(
        resp.headers().get("task-id").and_then(|v| v.to_str().ok()),
        Some(task.as_str())
    );
    let _ = resp.bytes().await;
    let rec = session
        .call("task.get_record", &[Value::from(&task)])
        .await
        .unwrap();
    session
        .call("task.destroy", &[Value::from(&task)])
        .await
        .unwrap();
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_xva_imports_onto_the_nfs_sr_and_a_corrupt_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let ip: IpAddr = "127.0.1.211".parse().unwrap();
    a3_server::sr::start(ip, dir.path(), stop).await.unwrap();
    let sim = SimPool::start(2, 1);
    let session = sim.session(0).await;
    let (sr, sr_uuid) = nfs_sr(&session, &ip.to_string()).await;

    let mut disk = vec![0u8; 4 * CHUNK_SIZE as usize];
    for (i, b) in disk.iter_mut().enumerate().take(CHUNK_SIZE as usize + 77) {
        *b = (i % 241) as u8 | 0x10;
    }
    let task = import(&sim, &session, &sr, xva(&disk)).await;
    assert_eq!(task.get_str("status"), Some("success"), "{task:?}");
    // xapi's import result: the XML-RPC encoded set of new VM refs.
    let result = xmlrpc::decode_value_document(task.get_str("result").unwrap().as_bytes()).unwrap();
    let vms = result.as_array().unwrap();
    assert_eq!(vms.len(), 1);
    let vm = session
        .call("VM.get_record", &[vms[0].clone()])
        .await
        .unwrap();
    assert_eq!(vm.get_str("name_label"), Some("ABD template"));
    assert_eq!(
        vm.get("other_config").unwrap().get_str(HIDE_KEY),
        Some("true")
    );
    let vdis = session
        .call("SR.get_VDIs", &[Value::from(&sr)])
        .await
        .unwrap();
    let vdis = vdis.as_array().unwrap();
    assert_eq!(vdis.len(), 1);
    let uuid = session
        .call("VDI.get_uuid", &[vdis[0].clone()])
        .await
        .unwrap();
    let file = dir
        .path()
        .join(format!("{sr_uuid}/{}.vhd", uuid.as_str().unwrap()));
    let bytes = std::fs::read(&file).unwrap();
    let mut r = a3_shared::vhd::VhdReader::open(std::io::Cursor::new(bytes)).unwrap();
    let mut back = vec![0u8; disk.len()];
    r.read_at(0, &mut back).unwrap();
    assert!(back == disk, "the VHD on the export holds the XVA's disk");

    // A corrupt chunk: the task fails with xapi's error; no VM, VDI or file is left.
    let vms_before = session.call("VM.get_all", &[]).await.unwrap();
    let mut bad = xva(&disk);
    let at = bad
        .windows(3)
        .position(|w| w == [0x10, 0x11, 0x12])
        .unwrap();
    bad[at + 1000] ^= 0x01;
    let task = import(&sim, &session, &sr, bad).await;
    assert_eq!(task.get_str("status"), Some("failure"));
    let info = task.get("error_info").unwrap().as_array().unwrap();
    assert_eq!(info[0].as_str(), Some("IMPORT_ERROR_SOME_CHECKSUMS_FAILED"));
    assert_eq!(session.call("VM.get_all", &[]).await.unwrap(), vms_before);
    let vdis = session
        .call("SR.get_VDIs", &[Value::from(&sr)])
        .await
        .unwrap();
    assert_eq!(vdis.as_array().unwrap().len(), 1);
    let files = std::fs::read_dir(dir.path().join(&sr_uuid))
        .unwrap()
        .count();
    assert_eq!(files, 1, "only the first import's VHD is on the export");
}
