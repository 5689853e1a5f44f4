//! The ABD diag job (issue 5): `a3-server abd diag --pool P` against the simulator holds an
//! ABD of the pool (provisioned, then reused), runs the A3's checks of it (SSH, through
//! which the agent's own checks come back, and a test disk the ABD reads through a real
//! hot-plug and hashes), prints one table per ABD with remedies, stores the results with
//! the job, and leaves nothing behind. A clean stop of the A3 halts its ABDs before
//! unplugging `Alike_SR` (XAPI refuses to unplug an SR under a running VM's disk), and
//! after a restart the same ABD serves again.

mod pool_support;

use std::time::Duration;

use pool_support::{A3, Sim, alike_sr, assert_nothing_left, objects};
use serde_json::Value as Json;

/// The stored check named `check` of a `job show --json` answer.
fn check<'a>(job: &'a Json, name: &str) -> &'a Json {
    job["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {job:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_job_checks_an_abd_and_stores_the_table() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-diag-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "1MiB");
    let a3 = A3::start(&scratch.path().join("a3"), &a3_ip);
    let pool = a3.add_pool(&sim);
    alike_sr(&sim).await;

    let out = a3.cli(&["abd", "diag", "--pool", &pool]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("a3-server abd diag --pool {pool}:\n{stdout}");
    let abds = a3.abd_vms();
    assert_eq!(abds.len(), 1, "the diag provisions one ABD: {abds:?}");
    let abd = abds[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(abds[0]["state"], "idle", "the ABD is given back");

    // One table for the ABD, a remedy on lines that do not pass, 445 called unused.
    assert!(stdout.contains(&format!("ABD {abd}")), "{stdout}\n{stderr}");
    for line in ["data port", "test disk", "port 445 (SMB)"] {
        assert!(stdout.contains(line), "no {line} line:\n{stdout}\n{stderr}");
    }
    let smb = stdout.lines().find(|l| l.contains("port 445")).unwrap();
    assert!(
        smb.contains("NOT USED") && smb.contains("not used by this product"),
        "{smb}"
    );

    // The results are stored with the job.
    let jobs = a3.json(&["job", "list"]);
    let job_id = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"]["kind"] == "diag")
        .map(|j| j["job"]["id"].as_i64().unwrap())
        .expect("a diag job in the list");
    let job = a3.json(&["job", "show", &job_id.to_string()]);
    let disk = check(&job, "test disk");
    assert_eq!(disk["status"], "pass", "{disk:#}\n{stdout}\n{stderr}");
    assert_eq!(disk["abd"], abd.as_str());
    assert!(
        disk["detail"].as_str().unwrap().contains("BLAKE3 matches"),
        "{disk:#}"
    );
    assert_eq!(check(&job, "data port")["status"], "pass");
    // The A3 reached the ABD over SSH with the host key pinned, and the agent's own
    // checks came back through it.
    let ssh = check(&job, "ssh");
    assert_eq!(ssh["status"], "pass", "{ssh:#}");
    assert!(
        ssh["detail"].as_str().unwrap().contains("pinned"),
        "{ssh:#}"
    );
    for line in ["ip", "quic", "tcp", "reverse path", "memory"] {
        let c = check(&job, line);
        assert_eq!(
            (&c["source"], &c["status"]),
            (&"abd".into(), &"pass".into()),
            "{c:#}"
        );
    }
    assert_eq!(check(&job, "port 445 (SMB)")["status"], "not used");
    let shown = a3.ok(&["job", "show", &job_id.to_string()]);
    assert!(
        shown.contains("test disk"),
        "job show prints the table: {shown}"
    );

    // A second diag reuses the same ABD; neither leaves a disk or VBD behind.
    let again = a3.cli(&["abd", "diag", "--pool", &pool]);
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again_out.contains(&format!("ABD {abd}")), "{again_out}");
    assert_eq!(a3.abd_vms().len(), 1, "the ABD is reused");
    let inv = sim.inventory().await;
    assert_nothing_left(&inv);
    let leftovers: Vec<Json> = objects(&inv, "VDI")
        .into_iter()
        .filter(|v| {
            v["name_label"]
                .as_str()
                .is_some_and(|n| n.starts_with("A3 diag test disk"))
        })
        .collect();
    assert!(leftovers.is_empty(), "test disks left: {leftovers:?}");

    // A clean stop halts the ABD (its disk is on Alike_SR), then unplugs the SR; the
    // simulator refuses the unplug otherwise, as XAPI does.
    let mut a3 = a3;
    assert!(
        a3.child
            .terminate(Duration::from_secs(90))
            .is_some_and(|s| s.success()),
        "clean shutdown failed; see {}",
        a3.log_path().display()
    );
    let inv = sim.inventory().await;
    let abd_vm = objects(&inv, "VM")
        .into_iter()
        .find(|v| v["other_config"]["a3_abd"] == abd.as_str())
        .expect("the ABD's VM");
    assert_eq!(abd_vm["power_state"], "Halted", "the ABD is halted");
    let alike = objects(&inv, "SR")
        .into_iter()
        .find(|sr| sr["name_label"] == "Alike_SR")
        .unwrap();
    let pbds: Vec<Json> = objects(&inv, "PBD")
        .into_iter()
        .filter(|p| inv["objects"]["SR"][p["SR"].as_str().unwrap()]["uuid"] == alike["uuid"])
        .collect();
    assert!(!pbds.is_empty());
    assert!(
        pbds.iter().all(|p| p["currently_attached"] == false),
        "Alike_SR stays plugged: {pbds:?}; see {}",
        a3.log_path().display()
    );

    // Restarted, the A3 plugs the SR back and revives the same ABD for the next diag.
    let state = a3.state.clone();
    drop(a3);
    let a3 = A3::start(&state, &a3_ip);
    let after = a3.cli(&["abd", "diag", "--pool", &pool]);
    let after_out = String::from_utf8_lossy(&after.stdout);
    let jobs = a3.json(&["job", "list"]);
    let last = jobs.as_array().unwrap()[0]["job"]["id"].to_string();
    assert!(
        after.status.success() && after_out.contains(&format!("ABD {abd}")),
        "{after_out}\n{}\njob log:\n{}",
        String::from_utf8_lossy(&after.stderr),
        a3.ok(&["job", "log", &last])
    );
    assert_eq!(
        a3.abd_vms().len(),
        1,
        "the halted ABD is revived, not replaced"
    );

    // An unknown pool is a clear error.
    let bad = a3.cli(&["abd", "diag", "--pool", "no-such-pool"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no pool 'no-such-pool'"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
