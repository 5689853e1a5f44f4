//! The A3 SR's NFS server against clients nobody here wrote:
//! - Debian's `libnfs-utils` (`nfs-ls`, `nfs-cp`), given `nfs://<ip>/alike/...` URLs without
//!   `nfsport`/`mountport`, so that libnfs finds MOUNT and NFS through the portmapper on 111,
//!   as XCP-ng's mount does;
//! - the `nfs3_client` crate, for LINK and READDIR.
//!
//! SM's probes (`rpcinfo`, `showmount`) are in `sr_nfs_probes.rs`.

use a3_e2e::{tool, tool_ok};
use std::net::{IpAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use nfs3_client::Nfs3Client;
use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::nfs3_types::nfs3::{
    GETATTR3args, LINK3args, LINK3res, LOOKUP3args, Nfs3Option, Nfs3Result, READ3args,
    READDIR3args, cookieverf3, diropargs3, filename3, nfs_fh3, nfsstat3,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;
use tokio_util::sync::CancellationToken;

/// Starts the SR server on a free 127.0.1.N (other tests may hold some), returning the address.
/// Each test of this file passes its own `slot`, so that they start their search 50 apart and
/// one never takes an address the other is about to bind again.
async fn start_sr(
    dir: &Path,
    shutdown: &CancellationToken,
    slot: u32,
) -> (IpAddr, tokio::task::JoinHandle<()>) {
    let first = 100 + (std::process::id() + slot * 50) % 100;
    let mut last_error = None;
    for n in (first..200).chain(2..first) {
        let ip: IpAddr = format!("127.0.1.{n}").parse().unwrap();
        match a3_server::sr::start(ip, dir, shutdown.clone()).await {
            Ok(task) => return (ip, task),
            Err(e) => last_error = Some(e),
        }
    }
    panic!("no free 127.0.1.N for the SR server: {last_error:?}");
}

/// A PMAPPROC_GETPORT call over UDP, as `mount.nfs` may send it.
fn getport_udp(ip: IpAddr, prog: u32) -> u32 {
    let sock = UdpSocket::bind((ip, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // xid, CALL, rpc v2, portmap 100000 v2, GETPORT, AUTH_NULL, AUTH_NULL, (prog, 3, TCP, 0)
    let words = [42u32, 0, 2, 100_000, 2, 3, 0, 0, 0, 0, prog, 3, 6, 0];
    let call: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    sock.send_to(&call, (ip, 111)).unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    let reply: Vec<u32> = buf[..n]
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(reply[..6], [42, 1, 0, 0, 0, 0], "GETPORT reply {reply:?}");
    reply[6]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnfs_lists_and_copies_through_the_portmapper() {
    let sr = tempfile::tempdir().unwrap();
    std::fs::create_dir(sr.path().join("sr-uuid")).unwrap();
    std::fs::write(sr.path().join("hello.txt"), b"hello\n").unwrap();
    let shutdown = CancellationToken::new();
    let (ip, task) = start_sr(sr.path(), &shutdown, 0).await;
    let base = format!("nfs://{ip}{}", a3_server::sr::EXPORT);

    let checks = tokio::task::spawn_blocking(move || {
        assert_eq!(getport_udp(ip, 100_003), 2049);
        assert_eq!(getport_udp(ip, 100_005), 2049);

        let listing = tool_ok("nfs-ls", &[&format!("{base}/")]);
        assert!(listing.contains("hello.txt"), "{listing}");
        assert!(listing.contains("sr-uuid"), "{listing}");

        // A 3 MiB file with no repeating pattern, in and out again.
        let work = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0u32..3 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let local = work.path().join("disk.vhd");
        std::fs::write(&local, &data).unwrap();
        tool_ok(
            "nfs-cp",
            &[local.to_str().unwrap(), &format!("{base}/sr-uuid/disk.vhd")],
        );
        let back = work.path().join("back.vhd");
        tool_ok(
            "nfs-cp",
            &[&format!("{base}/sr-uuid/disk.vhd"), back.to_str().unwrap()],
        );
        assert!(std::fs::read(&back).unwrap() == data, "the copy differs");
        let listing = tool_ok("nfs-ls", &[&format!("{base}/sr-uuid/")]);
        assert!(listing.contains("disk.vhd"), "{listing}");

        // An export other than /alike does not mount.
        let other = tool("nfs-ls", &[&format!("nfs://{ip}/other/")]);
        assert!(!other.status.success(), "mounted /other");
    })
    .await;
    // The server is stopped before any assertion failure is reported.
    shutdown.cancel();
    task.await.unwrap();
    checks.unwrap();
    assert_eq!(
        std::fs::read(sr.path().join("sr-uuid/disk.vhd"))
            .unwrap()
            .len(),
        3 << 20
    );
    // It has released its ports: the same address serves again.
    let again = CancellationToken::new();
    let task = a3_server::sr::start(ip, sr.path(), again.clone())
        .await
        .expect("the ports are free after a shutdown");
    again.cancel();
    task.await.unwrap();
}

fn fname(n: &str) -> filename3<'static> {
    filename3(Opaque::owned(n.as_bytes().to_vec()))
}

/// A READDIR's names and file ids, all pages.
async fn readdir<IO>(nfs: &mut Nfs3Client<IO>, dir: &nfs_fh3) -> Vec<(String, u64)>
where
    IO: nfs3_client::io::AsyncRead + nfs3_client::io::AsyncWrite + Send,
{
    let (mut cookie, mut cookieverf, mut out) = (0, cookieverf3::default(), Vec::new());
    loop {
        let args = READDIR3args {
            dir: dir.clone(),
            cookie,
            cookieverf,
            count: 512,
        };
        let Nfs3Result::Ok(ok) = nfs.readdir(&args).await.unwrap() else {
            panic!("READDIR failed");
        };
        for e in &ok.reply.entries.0 {
            out.push((String::from_utf8_lossy(&e.name.0).into_owned(), e.fileid));
            cookie = e.cookie;
        }
        cookieverf = ok.cookieverf;
        if ok.reply.eof {
            return out;
        }
    }
}

/// SM's hard-link check (`SharedFileSR._check_hardlinks`: `os.link(test, test + ".new")`)
/// done with NFSPROC3_LINK by a client nobody here wrote (the `nfs3_client` crate), and the
/// `.` and `..` entries Linux's nfsd lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_link_and_dot_entries_over_nfs() {
    let sr = tempfile::tempdir().unwrap();
    std::fs::create_dir(sr.path().join("sr-uuid")).unwrap();
    std::fs::write(sr.path().join("sr-uuid/test"), b"linked\n").unwrap();
    let shutdown = CancellationToken::new();
    let (ip, task) = start_sr(sr.path(), &shutdown, 1).await;

    let checks = tokio::spawn(async move {
        let root_cred = opaque_auth::auth_unix(&auth_unix {
            stamp: 0,
            machinename: Opaque::borrowed(b"sr-nfs-test"),
            uid: 0,
            gid: 0,
            gids: vec![],
        });
        let mut conn =
            Nfs3ConnectionBuilder::new(TokioConnector, ip.to_string(), a3_server::sr::EXPORT)
                .credential(root_cred)
                .mount()
                .await
                .expect("mount /alike through the portmapper");
        let root = conn.root_nfs_fh3();
        let lookup = async |nfs: &mut Nfs3Client<_>, dir: &nfs_fh3, n: &str| {
            let args = LOOKUP3args {
                what: diropargs3 {
                    dir: dir.clone(),
                    name: fname(n),
                },
            };
            match nfs.lookup(&args).await.unwrap() {
                Nfs3Result::Ok(ok) => ok.object,
                Nfs3Result::Err((stat, _)) => panic!("LOOKUP {n}: {stat:?}"),
            }
        };
        let link = async |nfs: &mut Nfs3Client<_>, file: &nfs_fh3, dir: &nfs_fh3, n: &str| {
            let args = LINK3args {
                file: file.clone(),
                link: diropargs3 {
                    dir: dir.clone(),
                    name: fname(n),
                },
            };
            nfs.link(&args).await.unwrap()
        };
        let nfs = &mut conn.nfs3_client;
        let dir = lookup(nfs, &root, "sr-uuid").await;
        let file = lookup(nfs, &dir, "test").await;

        match link(nfs, &file, &dir, "test.new").await {
            Nfs3Result::Ok(ok) => {
                let Nfs3Option::Some(attr) = ok.file_attributes else {
                    panic!("LINK returned no attributes");
                };
                assert_eq!(attr.nlink, 2);
            }
            Nfs3Result::Err((stat, _)) => panic!("LINK: {stat:?}"),
        }
        let again = lookup(nfs, &dir, "test.new").await;
        assert_eq!(again, file, "both names give the same handle");
        let read = READ3args {
            file: again,
            offset: 0,
            count: 100,
        };
        let Nfs3Result::Ok(data) = nfs.read(&read).await.unwrap() else {
            panic!("READ test.new failed");
        };
        assert_eq!(data.data.as_ref(), b"linked\n");

        // Errors are NFS3ERR_* codes: no hard link to a directory, no name outside.
        let refused = |r: LINK3res| match r {
            Nfs3Result::Err((stat, _)) => stat,
            Nfs3Result::Ok(_) => panic!("LINK succeeded"),
        };
        assert_eq!(
            refused(link(nfs, &dir, &root, "dir-link").await),
            nfsstat3::NFS3ERR_ISDIR
        );
        assert_eq!(
            refused(link(nfs, &file, &dir, "../up").await),
            nfsstat3::NFS3ERR_INVAL
        );
        assert_eq!(
            refused(link(nfs, &file, &dir, "test").await),
            nfsstat3::NFS3ERR_EXIST
        );

        let root_id = match nfs
            .getattr(&GETATTR3args {
                object: root.clone(),
            })
            .await
            .unwrap()
        {
            Nfs3Result::Ok(ok) => ok.obj_attributes.fileid,
            Nfs3Result::Err((stat, _)) => panic!("GETATTR /: {stat:?}"),
        };
        let dir_id = match nfs
            .getattr(&GETATTR3args {
                object: dir.clone(),
            })
            .await
            .unwrap()
        {
            Nfs3Result::Ok(ok) => ok.obj_attributes.fileid,
            Nfs3Result::Err((stat, _)) => panic!("GETATTR sr-uuid: {stat:?}"),
        };
        let mut inner = readdir(nfs, &dir).await;
        inner.sort();
        let file_id = inner.iter().find(|(n, _)| n == "test").unwrap().1;
        assert_eq!(
            inner,
            [
                (".".into(), dir_id),
                ("..".into(), root_id),
                ("test".into(), file_id),
                ("test.new".into(), file_id)
            ]
        );
        let top: Vec<String> = readdir(nfs, &root)
            .await
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(top, [".", "..", "sr-uuid"]);
        conn.unmount().await.unwrap();
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    checks.unwrap();

    let a = std::fs::metadata(sr.path().join("sr-uuid/test")).unwrap();
    let b = std::fs::metadata(sr.path().join("sr-uuid/test.new")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}
