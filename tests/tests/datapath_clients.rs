//! Only enrolled, unrevoked ABDs with this A3's certificates get in.

mod datapath_util;

use std::time::Duration;

use a3_e2e::wait_until;
use datapath_util::{A3, probe, scratch, start_agent};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An unenrolled client (wrong or used token), a client whose certificate comes from another
/// A3's CA, and a revoked ABD are all refused; a good one gets in.
#[test]
fn bad_clients_are_refused() {
    let dir = scratch();
    let a3 = A3::start(&dir.path().join("a3"), "127.0.1.203:0");
    let other = A3::start(&dir.path().join("other"), "127.0.1.204:0");

    // Good: enrolls with its token, then is accepted; the token is spent.
    let good = a3.enroll("good", dir.path());
    let p = probe(&good);
    assert!(p.status.success(), "good ABD refused: {}", stderr(&p));
    let text = std::fs::read_to_string(&good).unwrap();
    let reuse = dir.path().join("reuse.toml");
    std::fs::write(
        &reuse,
        format!("{text}state_dir = {:?}\n", dir.path().join("reuse.state")),
    )
    .unwrap();
    let p = probe(&reuse);
    assert!(!p.status.success(), "a spent token was accepted");
    assert!(stderr(&p).contains("token refused"), "{}", stderr(&p));

    // Unenrolled: an id the A3 never issued a token for.
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, text.replace("id = \"good\"", "id = \"stranger\"")).unwrap();
    let p = probe(&unknown);
    assert!(!p.status.success(), "an unenrolled ABD was accepted");
    assert!(stderr(&p).contains("token refused"), "{}", stderr(&p));

    // Another CA: enrolled at the other A3, then pointed at this one with this A3's pin.
    let other_dir = dir.path().join("other-cfg");
    std::fs::create_dir(&other_dir).unwrap();
    let foreign = other.enroll("good", &other_dir);
    let foreign_state = dir.path().join("foreign.state");
    let ftext = std::fs::read_to_string(&foreign).unwrap();
    std::fs::write(
        &foreign,
        format!("{ftext}state_dir = {:?}\n", foreign_state),
    )
    .unwrap();
    assert!(
        probe(&foreign).status.success(),
        "enrollment at the other A3"
    );
    let misplaced = dir.path().join("misplaced.toml");
    std::fs::write(
        &misplaced,
        format!("{text}state_dir = {:?}\n", foreign_state).replace("token = ", "# token = "),
    )
    .unwrap();
    let p = probe(&misplaced);
    assert!(
        !p.status.success(),
        "a certificate from another CA was accepted"
    );
    assert!(stderr(&p).contains("refused"), "{}", stderr(&p));

    // Revoked: a connected agent is cut off and cannot come back.
    let agent_cfg = a3.enroll("soon-revoked", dir.path());
    let _agent = start_agent(&a3, "soon-revoked", &agent_cfg);
    a3.ok(&["abd", "revoke", "soon-revoked"]);
    wait_until(Duration::from_secs(10), || {
        (!a3.connected("soon-revoked")).then_some(())
    })
    .expect("the revoked agent stays connected");
    let p = probe(&agent_cfg);
    assert!(!p.status.success(), "a revoked ABD was accepted");
    assert!(stderr(&p).contains("refused"), "{}", stderr(&p));
    let list = a3.ok(&["abd", "list"]);
    assert!(
        list.contains("soon-revoked") && list.contains("revoked"),
        "{list}"
    );
}
