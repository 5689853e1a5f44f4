//! The A3's XAPI client against a simulated pool: typed errors, session renewal, `Async.*`
//! calls through their task, the event watcher and certificate pinning.

mod xapi_support;

use std::sync::Arc;

use a3_server::xapi::records::{HostRecord, VdiRecord, VmRecord};
use a3_server::xapi::{Endpoint, EventWatcher, Operation, Session, Timeouts, Transport, XapiError};
use a3_shared::xapi_wire::Value;
use xapi_support::{SimPool, halted_vm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supporter_answers_host_is_slave_with_the_master() {
    let sim = SimPool::start(3, 1);
    let endpoint = Endpoint::new(&sim.hosts[2].address, sim.port);
    let transport = Transport::new(endpoint, None, Timeouts::default()).unwrap();
    let err = Session::login(transport, sim.credentials())
        .await
        .err()
        .expect("a supporter accepted a login");
    match err {
        XapiError::HostIsSlave { master, .. } => assert_eq!(master, sim.hosts[0].address),
        other => panic!("expected HOST_IS_SLAVE, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_session_is_renewed_and_the_call_retried() {
    let sim = SimPool::start(3, 1);
    let session = sim.session(0).await;
    // Log the session out behind the client's back: the next call meets SESSION_INVALID.
    session.call("session.logout", &[]).await.unwrap();
    let hosts = session.get_all_records::<HostRecord>().await.unwrap();
    assert_eq!(hosts.len(), 3);

    // A wrong password is a typed error naming the user.
    let endpoint = Endpoint::new(&sim.hosts[0].address, sim.port);
    let transport = Transport::new(endpoint, None, Timeouts::default()).unwrap();
    let mut creds = sim.credentials();
    creds.password = "wrong".into();
    match Session::login(transport, creds).await.err() {
        Some(XapiError::AuthenticationFailed { user, .. }) => assert_eq!(user, "root"),
        other => panic!("expected SESSION_AUTHENTICATION_FAILED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_are_awaited_through_their_task() {
    let sim = SimPool::start(3, 2);
    let session = sim.session(0).await;
    let source = halted_vm(&session).await;

    let clone = session
        .call_async(
            "VM.clone",
            &[Value::from(source.as_str()), Value::from("async-clone")],
        )
        .await
        .unwrap();
    let clone = clone.as_str().expect("VM.clone returns a ref").to_owned();
    assert!(clone.starts_with("OpaqueRef:"), "{clone}");
    let vm: VmRecord = session.get_record(&clone).await.unwrap();
    assert_eq!(vm.name_label, "async-clone");

    // A task's failure comes back as the typed error.
    session
        .call_async(
            "VM.start",
            &[Value::from(clone.as_str()), false.into(), false.into()],
        )
        .await
        .unwrap();
    let err = session
        .call_async(
            "VM.start",
            &[Value::from(clone.as_str()), false.into(), false.into()],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, XapiError::VmBadPowerState { actual, .. } if actual.eq_ignore_ascii_case("running")),
        "{err}"
    );
    // Finished tasks are destroyed.
    let tasks = session.call("task.get_all", &[]).await.unwrap();
    assert_eq!(tasks.as_array().map(<[Value]>::len), Some(0), "{tasks:?}");

    // An unknown ref is HANDLE_INVALID.
    let err = session
        .get_record::<VmRecord>("OpaqueRef:00000000-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert!(matches!(err, XapiError::HandleInvalid { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_watcher_reports_adds_and_deletes() {
    let sim = SimPool::start(3, 2);
    let session = Arc::new(sim.session(0).await);
    let pool_ref = session
        .call("pool.get_all", &[])
        .await
        .unwrap()
        .as_array()
        .unwrap()[0]
        .as_str()
        .unwrap()
        .to_owned();
    let token = EventWatcher::current_token(&session, &pool_ref)
        .await
        .unwrap();
    let mut watcher = EventWatcher::new(session.clone(), &["vm"], token);

    let source = halted_vm(&session).await;
    let clone = session
        .call("VM.clone", &[Value::from(source), Value::from("watched")])
        .await
        .unwrap();
    let clone = clone.as_str().unwrap().to_owned();
    let added = next_event(&mut watcher, &clone, Operation::Add).await;
    assert_eq!(
        added
            .snapshot
            .as_ref()
            .and_then(|s| s.get_str("name_label")),
        Some("watched")
    );

    session
        .call("VM.destroy", &[Value::from(clone.as_str())])
        .await
        .unwrap();
    next_event(&mut watcher, &clone, Operation::Del).await;
}

async fn next_event(
    watcher: &mut EventWatcher,
    reference: &str,
    op: Operation,
) -> a3_server::xapi::Event {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let batch = tokio::time::timeout_at(deadline, watcher.next_batch())
            .await
            .unwrap_or_else(|_| panic!("no {op:?} event for {reference}"))
            .unwrap();
        if let Some(e) = batch
            .into_iter()
            .find(|e| e.reference == reference && e.operation == op)
        {
            assert_eq!(e.class, "vm");
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_transport_refuses_another_certificate() {
    let sim = SimPool::start(3, 1);
    // Host 0 pinned with host 1's fingerprint: as if host 0's certificate had changed.
    let endpoint = Endpoint::new(&sim.hosts[0].address, sim.port);
    let wrong_pin = sim.hosts[1].fingerprint;
    let transport = Transport::new(endpoint.clone(), Some(wrong_pin), Timeouts::default()).unwrap();
    let err = Session::login(transport, sim.credentials())
        .await
        .err()
        .expect("a wrong certificate was accepted");
    match &err {
        XapiError::CertificateChanged {
            host,
            pinned,
            presented,
        } => {
            assert_eq!(host, &endpoint.to_string());
            assert_eq!(*pinned, wrong_pin);
            assert_eq!(*presented, sim.hosts[0].fingerprint);
        }
        other => panic!("expected a certificate error, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("a3-server host trust"), "{text}");

    // The right pin works.
    let transport = Transport::new(
        endpoint,
        Some(sim.hosts[0].fingerprint),
        Timeouts::default(),
    )
    .unwrap();
    Session::login(transport, sim.credentials()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_handlers_go_through_the_pinned_client() {
    let sim = SimPool::start(3, 1);
    let session = sim.session(0).await;
    let (vdi_ref, vdi) = session
        .get_all_records::<VdiRecord>()
        .await
        .unwrap()
        .into_iter()
        .find(|(_, v)| v.kind == "user" && !v.is_a_snapshot)
        .expect("the demo VM has a disk");
    let url = session.transport().url(&format!(
        "/export_raw_vdi?session_id={}&vdi={vdi_ref}&format=raw",
        session.session_ref().await
    ));
    let resp = session.transport().http().get(&url).send().await.unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len() as i64, vdi.virtual_size);
}
