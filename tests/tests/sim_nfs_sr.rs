//! xapi-sim's NFS SR against the A3's own NFS server (`a3_server::sr::start`): the sim's
//! NFSv3 client goes through the portmapper on 111 as XCP-ng's mount does. Each test's
//! server has its own loopback address (127.0.1.20x), as ports 111 and 2049 are fixed.

mod xapi_support;

use std::io::Cursor;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use a3_server::sr::EXPORT;
use a3_server::xapi::{Session, XapiError};
use a3_shared::vhd::{BLOCK_SIZE, VhdReader};
use a3_shared::xapi_wire::Value;
use tokio_util::sync::CancellationToken;
use xapi_support::SimPool;

/// A running A3 NFS server on `ip`, serving a temporary directory.
struct NfsServer {
    ip: String,
    dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl NfsServer {
    async fn start(ip: &str) -> NfsServer {
        let dir = tempfile::tempdir().unwrap();
        let s = NfsServer {
            ip: ip.to_owned(),
            dir,
            stop: CancellationToken::new(),
        };
        s.serve().await;
        s
    }

    async fn serve(&self) {
        let ip: IpAddr = self.ip.parse().unwrap();
        a3_server::sr::start(ip, self.dir.path(), self.stop.clone())
            .await
            .unwrap_or_else(|e| panic!("A3 NFS server on {ip}: {e:#}"));
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn device_config(server: &str) -> Value {
    [("server", server), ("serverpath", EXPORT)]
        .into_iter()
        .collect()
}

async fn master(session: &Session) -> String {
    let pools = session.call("pool.get_all", &[]).await.unwrap();
    let pool = pools.as_array().unwrap()[0].clone();
    let m = session.call("pool.get_master", &[pool]).await.unwrap();
    m.as_str().unwrap().to_owned()
}

async fn create_sr(session: &Session, server: &str) -> Result<String, XapiError> {
    let host = master(session).await;
    let args = [
        Value::from(host),
        device_config(server),
        Value::from("0"),
        Value::from("Alike_SR"),
        Value::from("the A3's SR"),
        Value::from("nfs"),
        Value::from("user"),
        Value::Bool(true),
        Value::empty_struct(),
    ];
    session
        .call("SR.create", &args)
        .await
        .map(|v| v.as_str().unwrap().to_owned())
}

async fn str_field(session: &Session, class: &str, r: &str, field: &str) -> String {
    let v = session
        .call(&format!("{class}.get_{field}"), &[Value::from(r)])
        .await
        .unwrap();
    v.as_str().unwrap_or_default().to_owned()
}

async fn refs(session: &Session, class: &str, r: &str, field: &str) -> Vec<String> {
    let v = session
        .call(&format!("{class}.get_{field}"), &[Value::from(r)])
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

async fn attached(session: &Session, pbd: &str) -> bool {
    let v = session
        .call("PBD.get_currently_attached", &[Value::from(pbd)])
        .await
        .unwrap();
    v.as_bool().unwrap()
}

async fn create_vdi(session: &Session, sr: &str, size: u64) -> Result<String, XapiError> {
    let rec: Value = [
        ("SR", Value::from(sr)),
        ("virtual_size", Value::from(size.to_string())),
        ("name_label", Value::from("test disk")),
        ("type", Value::from("user")),
        ("sharable", Value::Bool(false)),
        ("read_only", Value::Bool(false)),
        ("other_config", Value::empty_struct()),
    ]
    .into_iter()
    .collect();
    session
        .call("VDI.create", &[rec])
        .await
        .map(|v| v.as_str().unwrap().to_owned())
}

fn api_error(e: XapiError) -> (String, Vec<String>) {
    match e {
        XapiError::Api { code, params, .. } => (code, params),
        e => panic!("expected an XAPI error, got {e}"),
    }
}

/// The disk inside a VHD file on the server's directory, read with the shared reader.
fn vhd_content(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let mut r = VhdReader::open(Cursor::new(bytes)).unwrap();
    let mut out = vec![0u8; r.size() as usize];
    r.read_at(0, &mut out).unwrap();
    out
}

/// An HTTPS client for the sim's HTTP handlers (self-signed certificates).
fn http() -> reqwest::Client {
    let (tls, _) = a3_server::xapi::tls::pinned_client_config(None);
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alike_sr_is_a_directory_of_vhds_on_the_a3_export() {
    let nfs = NfsServer::start("127.0.1.201").await;
    let sim = SimPool::start(3, 1);
    let session = sim.session(0).await;
    let sr = create_sr(&session, &nfs.ip).await.unwrap();
    let sr_uuid = str_field(&session, "SR", &sr, "uuid").await;
    assert_eq!(str_field(&session, "SR", &sr, "type").await, "nfs");
    assert!(
        nfs.path(&sr_uuid).is_dir(),
        "SR.create made <export>/<sr-uuid>/"
    );
    let pbds = refs(&session, "SR", &sr, "PBDs").await;
    assert_eq!(pbds.len(), 3, "one PBD per host");
    for p in &pbds {
        assert!(attached(&session, p).await);
    }

    // A VDI is <sr-uuid>/<vdi-uuid>.vhd, its size rounded to 2 MiB blocks.
    let vdi = create_vdi(&session, &sr, 5 << 20).await.unwrap();
    let uuid = str_field(&session, "VDI", &vdi, "uuid").await;
    let size = session
        .call("VDI.get_virtual_size", &[Value::from(&vdi)])
        .await
        .unwrap()
        .as_i64()
        .unwrap() as u64;
    assert_eq!(size, 3 * BLOCK_SIZE);
    let file = nfs.path(&format!("{sr_uuid}/{uuid}.vhd"));
    assert_eq!(vhd_content(&file), vec![0u8; size as usize]);

    // Raw bytes in through /import_raw_vdi land in the VHD over NFS; they come back out.
    let mut data = vec![0u8; size as usize];
    for (i, b) in data[(1 << 20)..(3 << 20)].iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    let base = format!("https://{}", sim.endpoint(0));
    let sid = session.session_ref().await;
    let put = http()
        .put(format!(
            "{base}/import_raw_vdi?session_id={sid}&vdi={vdi}&format=raw"
        ))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let status = put.status();
    // As from xapi, the 200 comes before the write; the reply ends when the write does.
    let reply = put.text().await;
    assert!(status.is_success(), "{status}: {reply:?}");
    assert!(
        vhd_content(&file) == data,
        "the VHD on the export holds the bytes"
    );
    let got = http()
        .get(format!(
            "{base}/export_raw_vdi?session_id={sid}&vdi={vdi}&format=raw"
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == data[..]);

    // Clones are files of their own; destroy removes the file.
    let clone = session
        .call("VDI.clone", &[Value::from(&vdi)])
        .await
        .unwrap();
    let clone_uuid = str_field(&session, "VDI", clone.as_str().unwrap(), "uuid").await;
    let clone_file = nfs.path(&format!("{sr_uuid}/{clone_uuid}.vhd"));
    assert!(vhd_content(&clone_file) == data);
    session.call("VDI.destroy", &[clone]).await.unwrap();
    assert!(!clone_file.exists());

    // SR.scan introduces a VHD nobody knew and forgets a VDI whose file vanished.
    let stranger = "0b2c5a3e-1111-4222-8333-944455556666";
    std::fs::copy(&file, nfs.path(&format!("{sr_uuid}/{stranger}.vhd"))).unwrap();
    std::fs::remove_file(&file).unwrap();
    session.call("SR.scan", &[Value::from(&sr)]).await.unwrap();
    let vdis = refs(&session, "SR", &sr, "VDIs").await;
    assert_eq!(vdis.len(), 1);
    assert_eq!(str_field(&session, "VDI", &vdis[0], "uuid").await, stranger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbds_mount_and_unmount_and_fail_with_sr_backend_failure_when_unreachable() {
    let nfs = NfsServer::start("127.0.1.202").await;
    let sim = SimPool::start(2, 1);
    let session = sim.session(0).await;

    // Nothing serves NFS on .209: SR.create fails as NFSSR does, and leaves no SR.
    let (code, params) = api_error(create_sr(&session, "127.0.1.209").await.unwrap_err());
    assert_eq!(code, "SR_BACKEND_FAILURE_73");
    assert!(
        params[1].contains("NFS mount error") && params[1].contains("127.0.1.209:/alike"),
        "{params:?}"
    );
    let all = session.call("SR.get_all", &[]).await.unwrap();
    let before = all.as_array().unwrap().len();

    let sr = create_sr(&session, &nfs.ip).await.unwrap();
    let vdi = create_vdi(&session, &sr, BLOCK_SIZE).await.unwrap();
    let pbds = refs(&session, "SR", &sr, "PBDs").await;
    for p in &pbds {
        session.call("PBD.unplug", &[Value::from(p)]).await.unwrap();
        assert!(!attached(&session, p).await);
    }
    let (code, _) = api_error(create_vdi(&session, &sr, BLOCK_SIZE).await.unwrap_err());
    assert_eq!(code, "SR_NO_PBDS");
    let (code, _) = api_error(
        session
            .call("VDI.destroy", &[Value::from(&vdi)])
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "SR_NO_PBDS");

    // With the server stopped, plugging fails and names the server and the export.
    nfs.stop.cancel();
    let err = wait_for_plug_failure(&session, &pbds[0]).await;
    assert_eq!(err.0, "SR_BACKEND_FAILURE_73");
    assert!(
        err.1[1].contains(&format!("{}:/alike", nfs.ip)),
        "{:?}",
        err.1
    );
    assert!(!attached(&session, &pbds[0]).await);

    // Served again, every PBD plugs and the VDI is there.
    let nfs = NfsServer {
        ip: nfs.ip.clone(),
        dir: nfs_dir_keep(nfs),
        stop: CancellationToken::new(),
    };
    nfs.serve().await;
    for p in &pbds {
        session.call("PBD.plug", &[Value::from(p)]).await.unwrap();
        assert!(attached(&session, p).await);
    }
    session.call("SR.scan", &[Value::from(&sr)]).await.unwrap();
    assert_eq!(
        refs(&session, "SR", &sr, "VDIs").await,
        std::slice::from_ref(&vdi)
    );
    session
        .call("VDI.destroy", &[Value::from(&vdi)])
        .await
        .unwrap();

    // SR.destroy (PBDs unplugged) removes the SR directory from the export.
    let sr_uuid = str_field(&session, "SR", &sr, "uuid").await;
    for p in &pbds {
        session.call("PBD.unplug", &[Value::from(p)]).await.unwrap();
    }
    session
        .call("SR.destroy", &[Value::from(&sr)])
        .await
        .unwrap();
    assert!(!nfs.path(&sr_uuid).exists());
    let all = session.call("SR.get_all", &[]).await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), before);
}

/// Keeps a stopped server's directory for the next server on the same address.
fn nfs_dir_keep(mut old: NfsServer) -> tempfile::TempDir {
    let dir = std::mem::replace(&mut old.dir, tempfile::tempdir().unwrap());
    drop(old);
    dir
}

/// `PBD.plug`'s failure once the stopped server no longer accepts connections.
async fn wait_for_plug_failure(session: &Session, pbd: &str) -> (String, Vec<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match session.call("PBD.plug", &[Value::from(pbd)]).await {
            Err(e) => return api_error(e),
            Ok(_) => {
                session
                    .call("PBD.unplug", &[Value::from(pbd)])
                    .await
                    .unwrap();
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "PBD.plug kept succeeding after the NFS server stopped"
                );
                tokio::task::yield_now().await;
            }
        }
    }
}
