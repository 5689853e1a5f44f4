//! What PID 1 runs: boot steps, the boot config, the network, the boot-time self-checks on
//! the console, then the agent's connection to its A3, forever.
//!
//! Nothing here returns: each step that fails is logged and retried with a delay, since
//! an exit of PID 1 is a kernel panic. The console shows every step, which is all an
//! operator (or a test reading the serial port) sees of the appliance.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::bootcfg::{self, BootConfig};
use crate::net::{self, Configured};
use crate::xenbus::{self, Transport, Xenstore};
use crate::{conn, diag, ssh};

/// How often the status line is printed even when nothing changed.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// A peak-RSS change that prints the status line at once.
const STATUS_STEP_KIB: u64 = 1024;
/// Delay before retrying a failed boot step.
const RETRY: Duration = Duration::from_secs(5);

/// PID 1's main: never returns.
pub fn run() -> ! {
    super::boot();
    // Two cores in the appliance, as in `main_exec`; the runtime is built after `boot` so
    // that its threads inherit the blocked SIGCHLD.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(3)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => super::park(&format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(appliance());
    super::park("the appliance's main task ended")
}

async fn appliance() {
    let (cfg, mut xs) = loop {
        match read_boot_config(None) {
            Ok(found) => break found,
            Err(e) => {
                tracing::error!(
                    "boot config: {e:#}; reading it again in {}s",
                    RETRY.as_secs()
                );
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    xenbus::report_pv_features(xs.as_mut());
    tracing::info!(
        "boot config: ABD {} for the A3 {} at {}; network {:?}; dns {:?}",
        cfg.agent.id,
        cfg.agent.server_name,
        cfg.agent.a3_address,
        cfg.net.addressing,
        cfg.net.dns
    );
    let net = loop {
        match net::configure(&cfg.net).await {
            Ok(net) => break net,
            Err(e) => {
                tracing::error!("network: {e:#}; trying again in {}s", RETRY.as_secs());
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    tracing::info!(
        "network: {} on {} ({}), gateway {:?}, uptime {:.1}s",
        net.cidr(),
        net.nic,
        net.source,
        net.gateway,
        uptime_secs()
    );
    report_assigned_ip(xs.as_mut(), &net);
    let ssh_listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, ssh::PORT));
    let ssh = ssh::start_for(&cfg, ssh_listen, true, xs.as_mut()).await;
    let hostkey = ssh.as_ref().map(|s| s.fingerprint.clone());
    tokio::spawn(status_lines(hostkey));
    let agent = cfg.agent.clone();
    tokio::spawn(async move {
        loop {
            // `run` returns only on a startup error (its state dir, say).
            if let Err(e) = conn::run(agent.clone()).await {
                tracing::error!("agent: {e:#}; starting again in {}s", RETRY.as_secs());
            }
            tokio::time::sleep(RETRY).await;
        }
    });
    boot_diag(&cfg, ssh.map(|s| s.addr)).await;
    std::future::pending::<()>().await;
}

/// The boot config from xenstore (under Xen), the kernel command line and `file`, with the
/// xenstore connection when there is one.
pub fn read_boot_config(
    file: Option<&Path>,
) -> anyhow::Result<(BootConfig, Option<Xenstore<Transport>>)> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    bootcfg::gather(None, &cmdline, file)
}

/// The console line reporting a `vm-data/abd/<key>` value where there is no xenstore
/// (qemu): `abd-vm-data: <key>=<value>`; xapi-sim's qemu backend copies it into the VM's
/// `xenstore_data`, as xenstored would.
pub const CONSOLE_VM_DATA: &str = "abd-vm-data: ";

/// Tells the A3 the address through `vm-data/abd/assigned-ip`: in xenstore under Xen, else
/// on the console.
fn report_assigned_ip(xs: Option<&mut Xenstore<Transport>>, net: &Configured) {
    let Some(xs) = xs else {
        let key = xenbus::ASSIGNED_IP.trim_start_matches(xenbus::ABD_DIR);
        eprintln!(
            "{CONSOLE_VM_DATA}{}={}",
            key.trim_start_matches('/'),
            net.cidr()
        );
        return;
    };
    match xs.write(xenbus::ASSIGNED_IP, &net.cidr()) {
        Ok(()) => tracing::info!("xenstore: {} = {}", xenbus::ASSIGNED_IP, net.cidr()),
        Err(e) => tracing::error!("xenstore: cannot write {}: {e:#}", xenbus::ASSIGNED_IP),
    }
}

/// Runs the self-checks once and prints them: the table, then one JSON line.
async fn boot_diag(cfg: &BootConfig, ssh: Option<SocketAddr>) {
    let checks = diag::run(cfg, &[], ssh).await;
    let table = diag::table(&checks);
    let json = serde_json::to_string(&checks).unwrap_or_else(|e| format!("\"{e}\""));
    // Plain writes: the table is for people, the marked line for programs.
    eprint!("abd diag at boot:\n{table}");
    eprintln!("abd-diag-json: {json}");
}

/// Prints the agent's peak RSS and the guest's available memory when the peak grows, and
/// every [`STATUS_EVERY`] otherwise, with the SSH host key's fingerprint for the A3 to pin.
async fn status_lines(hostkey: Option<String>) {
    let hostkey = hostkey.unwrap_or_else(|| "none".into());
    let mut printed_peak = 0;
    let mut since = tokio::time::Instant::now();
    loop {
        let peak = proc_kib("/proc/self/status", "VmHWM:").unwrap_or(0);
        if peak >= printed_peak + STATUS_STEP_KIB || since.elapsed() >= STATUS_EVERY {
            let rss = proc_kib("/proc/self/status", "VmRSS:").unwrap_or(0);
            let avail = proc_kib("/proc/meminfo", "MemAvailable:").unwrap_or(0);
            let free = proc_kib("/proc/meminfo", "MemFree:").unwrap_or(0);
            eprintln!(
                "abd-status: uptime_s={:.1} vmhwm_kib={peak} vmrss_kib={rss} \
                 mem_available_kib={avail} mem_free_kib={free} boot_errors={} \
                 ssh_hostkey={hostkey}",
                uptime_secs(),
                super::boot_errors()
            );
            printed_peak = peak;
            since = tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A `key: N kB` field of a /proc file.
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.strip_prefix(key)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

fn uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
