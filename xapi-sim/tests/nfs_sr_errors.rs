//! NFS SRs whose server cannot be reached, in process: the failures XCP-ng's NFSSR gives,
//! and nothing left behind. (The NFS SR against a real server is tested in the `tests`
//! crate, with the A3's NFS server.)

mod common;

use a3_shared::xapi_wire::Value;
use common::Pool;

/// Nothing listens here: tests in this workspace keep 127.0.1.254 free.
const NOBODY: &str = "127.0.1.254";

fn config(pairs: &[(&str, &str)]) -> Value {
    pairs.iter().copied().collect()
}

async fn master(pool: &Pool) -> Value {
    let pools = pool.ok("pool.get_all", vec![]).await;
    let p = pools.as_array().unwrap()[0].clone();
    pool.ok("pool.get_master", vec![p]).await
}

async fn sr_create(pool: &Pool, dc: Value) -> Vec<String> {
    let host = master(pool).await;
    pool.fail(
        "SR.create",
        vec![
            host,
            dc,
            "0".into(),
            "Alike_SR".into(),
            "".into(),
            "nfs".into(),
            "user".into(),
            true.into(),
            Value::empty_struct(),
        ],
    )
    .await
}

async fn count(pool: &Pool, class: &str) -> usize {
    let all = pool.ok(&format!("{class}.get_all"), vec![]).await;
    all.as_array().unwrap().len()
}

#[tokio::test]
async fn an_unreachable_server_fails_sr_create_and_pbd_plug_with_sr_backend_failure() {
    let pool = Pool::start(2, 0).await;
    let (srs, pbds) = (count(&pool, "SR").await, count(&pool, "PBD").await);

    let err = sr_create(
        &pool,
        config(&[("server", NOBODY), ("serverpath", "/alike")]),
    )
    .await;
    assert_eq!(err[0], "SR_BACKEND_FAILURE_73", "{err:?}");
    assert!(err[2].contains("NFS mount error"), "{err:?}");
    assert!(
        err[2].contains("127.0.1.254:/alike"),
        "names server and export: {err:?}"
    );
    assert_eq!(
        (count(&pool, "SR").await, count(&pool, "PBD").await),
        (srs, pbds)
    );

    let err = sr_create(&pool, config(&[("serverpath", "/alike")])).await;
    assert_eq!(err[0], "SR_BACKEND_FAILURE");
    assert!(err[3].contains("server"), "{err:?}");
    let err = sr_create(
        &pool,
        config(&[("server", NOBODY), ("serverpath", "alike")]),
    )
    .await;
    assert!(err[3].contains("serverpath"), "{err:?}");

    // An introduced SR with a PBD: plugging fails and leaves the PBD unplugged; VDI
    // operations then have no PBD to run on.
    let sr = pool
        .ok(
            "SR.introduce",
            vec![
                "7d0b2f7e-5bd5-4b0e-9a0e-1c2d3e4f5a6b".into(),
                "Alike_SR".into(),
                "".into(),
                "nfs".into(),
                "user".into(),
                true.into(),
            ],
        )
        .await;
    let rec: Value = [
        ("host", master(&pool).await),
        ("SR", sr.clone()),
        (
            "device_config",
            config(&[("server", NOBODY), ("serverpath", "/alike")]),
        ),
    ]
    .into_iter()
    .collect();
    let pbd = pool.ok("PBD.create", vec![rec]).await;
    let err = pool.fail("PBD.plug", vec![pbd.clone()]).await;
    assert_eq!(err[0], "SR_BACKEND_FAILURE_73", "{err:?}");
    let attached = pool.ok("PBD.get_currently_attached", vec![pbd]).await;
    assert_eq!(attached.as_bool(), Some(false));
    let vdi: Value = [
        ("SR", sr.clone()),
        ("virtual_size", Value::from("1048576")),
        ("type", Value::from("user")),
    ]
    .into_iter()
    .collect();
    let err = pool.fail("VDI.create", vec![vdi]).await;
    assert_eq!(
        err,
        ["SR_NO_PBDS".to_owned(), sr.as_str().unwrap().to_owned()]
    );
    let err = pool.fail("SR.scan", vec![sr]).await;
    assert_eq!(err[0], "SR_NO_PBDS");
}
