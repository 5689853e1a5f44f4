//! A hostile *enrolled* client on port 2811: it holds a valid certificate, so the TLS layer
//! lets it in, and then it lies. It announces a disk of 2^63 bytes for a job it was given,
//! and sends frames announcing 4 GiB. The A3 refuses each with a clear reason, allocates
//! nothing for them, and keeps serving an honest ABD whose backup runs meanwhile.
//!
//! The hostile side is written here with quinn and the ABD's real credential (the agent
//! enrolls it), not in the agent: the shipped agent has no lying mode.

mod datapath_util;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use a3_shared::proto::{
    A3Msg, ALPN, AgentMsg, DataDown, DataUp, FRAME_HEADER_LEN, PROTOCOL_VERSION, frame, transport,
};
use datapath_util::{A3, assert_same, finish, probe, scratch, spawn_backup, start_agent};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// Accepts the A3's certificate unchecked: this client attacks the A3 it was started
/// against; whether it trusts the right server is not what the test is about.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    a3_shared::ring_handshake_signatures!();
}

/// The fields of an agent config this client needs.
#[derive(serde::Deserialize)]
struct AgentConfig {
    id: String,
    a3_address: SocketAddr,
    server_name: String,
}

/// An enrolled ABD's connection, driven by hand.
struct Hostile {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    control: (quinn::SendStream, quinn::RecvStream),
}

impl Hostile {
    /// Connects with the credential `abd-agent probe` enrolled for `cfg`, and says hello.
    async fn connect(cfg: &Path) -> Hostile {
        let c: AgentConfig = toml::from_str(&std::fs::read_to_string(cfg).unwrap()).unwrap();
        let mut state = cfg.as_os_str().to_owned();
        state.push(".state");
        let state = Path::new(&state);
        let key_pem = std::fs::read_to_string(state.join("client.key")).unwrap();
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let cert = CertificateDer::from(std::fs::read(state.join("client.crt")).unwrap());
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(
            vec![cert],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        client.transport_config(Arc::new(transport::transport(transport::Side::Agent)));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint
            .connect_with(client, c.a3_address, &c.server_name)
            .unwrap()
            .await
            .unwrap();
        let mut control = conn.open_bi().await.unwrap();
        send(
            &mut control.0,
            &AgentMsg::Hello {
                version: PROTOCOL_VERSION,
                abd_id: c.id,
                agent: "hostile test client".into(),
            },
        )
        .await;
        match recv::<A3Msg>(&mut control.1).await {
            Some(A3Msg::Welcome { .. }) => {}
            other => panic!("the A3 did not welcome an enrolled ABD: {other:?}"),
        }
        Hostile {
            endpoint,
            conn,
            control,
        }
    }

    /// Waits for the A3 to assign a backup job; returns its id.
    async fn next_backup(&mut self) -> u64 {
        loop {
            match recv::<A3Msg>(&mut self.control.1).await {
                Some(A3Msg::Backup(job)) => return job.job,
                Some(_) => continue,
                None => panic!("the A3 closed the control stream before assigning a backup"),
            }
        }
    }
}

async fn send<T: serde::Serialize>(s: &mut quinn::SendStream, msg: &T) {
    s.write_all(&frame::encode(msg)).await.unwrap();
}

/// Reads one frame; `None` when the stream ended or broke.
async fn recv<T: serde::de::DeserializeOwned>(r: &mut quinn::RecvStream) -> Option<T> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut header).await.ok()?;
    let len = frame::payload_len(header).unwrap();
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    Some(frame::decode_payload(&payload).unwrap())
}

/// A frame header announcing 4 GiB - 1 bytes, then a few bytes of "payload".
fn huge_frame() -> Vec<u8> {
    let mut bytes = u32::MAX.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0xAB; 64]);
    bytes
}

#[test]
fn hostile_enrolled_client_is_refused_and_others_keep_working() {
    let dir = scratch();
    let a3 = A3::start(&dir.path().join("a3"), "127.0.1.214:0");

    // The honest ABD starts a backup that is still running while the attacks happen.
    let honest_cfg = a3.enroll("honest", dir.path());
    let _honest = start_agent(&a3, "honest", &honest_cfg);
    let disk = dir.path().join("honest.img");
    let image = datapath_util::write_random(&disk, 11, 96 << 20);
    let honest_backup = spawn_backup(&a3, "honest", &disk, "honest-disk");

    // The hostile ABD is enrolled for real: its certificate is valid.
    let hostile_cfg = a3.enroll("hostile", dir.path());
    let p = probe(&hostile_cfg);
    assert!(p.status.success(), "enrolling the hostile ABD: {p:?}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut h = Hostile::connect(&hostile_cfg).await;
        let dummy = dir.path().join("nothing-read.img");

        // 1. A disk of 2^63 bytes, announced for a job the A3 did give it.
        let cli = spawn_backup(&a3, "hostile", &dummy, "hostile-disk");
        let job = h.next_backup().await;
        let (mut s, mut r) = h.conn.open_bi().await.unwrap();
        send(
            &mut s,
            &DataUp::Open {
                job,
                stream: 0,
                streams: 1,
                size: 1 << 63,
            },
        )
        .await;
        match recv::<DataDown>(&mut r).await {
            Some(DataDown::Error { reason }) => assert!(
                reason.contains("bytes") && reason.contains(&(1u64 << 63).to_string()),
                "the refusal does not name the announced size: {reason}"
            ),
            other => panic!("a 2^63-byte disk was not refused: {other:?}"),
        }
        let (ok, err) = finish(cli);
        assert!(!ok, "the backup of a 2^63-byte disk succeeded");
        assert!(err.contains(&(1u64 << 63).to_string()), "{err}");

        // 2. A data stream whose first frame announces 4 GiB: the stream is cut, the
        //    connection stays.
        let cli = spawn_backup(&a3, "hostile", &dummy, "hostile-disk-2");
        let _job = h.next_backup().await;
        let (mut s, mut r) = h.conn.open_bi().await.unwrap();
        s.write_all(&huge_frame()).await.unwrap();
        assert!(
            recv::<DataDown>(&mut r).await.is_none(),
            "the A3 answered a 4 GiB frame instead of cutting the stream"
        );
        assert!(
            h.conn.close_reason().is_none(),
            "one bad stream cut the connection"
        );

        // 3. The control stream announces 4 GiB: the A3 ends this ABD's session, and its
        //    job fails with a reason.
        h.control.0.write_all(&huge_frame()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), h.conn.closed())
            .await
            .expect("the A3 kept a session whose control stream sent a 4 GiB frame");
        let (ok, err) = finish(cli);
        assert!(!ok, "the job of a cut-off ABD succeeded");
        assert!(
            err.contains("hostile"),
            "the failure does not name the ABD: {err}"
        );
        h.endpoint.close(0u32.into(), b"done");
    });

    // The A3 still serves: the honest ABD stayed connected, its backup commits and restores.
    assert!(a3.connected("honest"), "the honest ABD lost its connection");
    assert!(!a3.connected("hostile"));
    let (ok, err) = finish(honest_backup);
    assert!(ok, "the honest backup failed beside the attacks: {err}");
    let version = a3.versions("honest-disk")[0]["id"].to_string();
    let out = dir.path().join("restored.img");
    let r = a3.restore("honest", &version, &out);
    assert!(r.status.success(), "{r:?}");
    assert_same("restored disk", &std::fs::read(&out).unwrap(), &image);
    let log = std::fs::read_to_string(a3_e2e::a3_log(&a3.state)).unwrap();
    assert!(
        log.contains("exceeds"),
        "the A3's log does not say why it cut the 4 GiB frames"
    );
}
