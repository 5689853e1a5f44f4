//! The commands the A3 may run over SSH: `diag [--json]`, `status [--json]`, `logs` and
//! `reboot`. Each gives its output and an exit status; nothing else is ever executed.

use std::net::SocketAddr;

use serde::Serialize;

use crate::bootcfg::BootConfig;
use crate::{diag, logring, status};

/// The exit status of an unknown command (a shell's "command not found").
pub const UNKNOWN: u32 = 127;
/// The exit status of a known command given bad arguments.
const USAGE: u32 = 2;
const COMMANDS: &str = "diag [--json], status [--json], logs, reboot";

/// What a command needs to know about the agent.
pub struct Context {
    /// The boot config (for `diag` and `status`).
    pub boot: BootConfig,
    /// Where SSH listens (for `diag`'s reverse-path line and `status`).
    pub listen: SocketAddr,
    /// True in the appliance (PID 1), false for an agent run as a process.
    pub appliance: bool,
}

/// A command's result.
#[derive(Debug)]
pub struct Reply {
    /// The exit status.
    pub status: u32,
    /// What it printed.
    pub stdout: String,
    /// The VM must reboot once the reply is sent.
    pub reboot: bool,
}

impl Reply {
    fn new(status: u32, stdout: String) -> Reply {
        Reply {
            status,
            stdout,
            reboot: false,
        }
    }
}

/// Runs `command` (the exec request's text).
pub async fn run(ctx: &Context, command: &str) -> Reply {
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some((&name, args)) = words.split_first() else {
        return Reply::new(
            UNKNOWN,
            format!("no command given (this ABD has no shell); it serves: {COMMANDS}\n"),
        );
    };
    let json = match (name, args) {
        ("diag" | "status", ["--json"]) => true,
        ("diag" | "status" | "logs" | "reboot", []) => false,
        ("diag" | "status" | "logs" | "reboot", _) => {
            return Reply::new(
                USAGE,
                format!("bad arguments in {command:?}; this ABD serves: {COMMANDS}\n"),
            );
        }
        _ => {
            return Reply::new(
                UNKNOWN,
                format!("unknown command {name:?}; this ABD serves: {COMMANDS}\n"),
            );
        }
    };
    match name {
        "diag" => diag(ctx, json).await,
        "status" => Reply::new(0, status_text(ctx, json)),
        "logs" => {
            let mut out = logring::recent().join("\n");
            out.push('\n');
            Reply::new(0, out)
        }
        _ if ctx.appliance => Reply {
            status: 0,
            stdout: format!("ABD {}: rebooting\n", ctx.boot.agent.id),
            reboot: true,
        },
        _ => Reply::new(
            1,
            format!(
                "ABD {}: this agent runs as a process, not as the appliance's init: there is \
                 no VM to reboot here; restart the process instead\n",
                ctx.boot.agent.id
            ),
        ),
    }
}

async fn diag(ctx: &Context, json: bool) -> Reply {
    let checks = diag::run(&ctx.boot, &[], Some(ctx.listen)).await;
    let status = u32::from(diag::any_failed(&checks));
    let stdout = if json {
        serde_json::to_string_pretty(&checks).unwrap_or_else(|e| format!("\"{e}\"")) + "\n"
    } else {
        diag::table(&checks)
    };
    Reply::new(status, stdout)
}

#[derive(Serialize)]
struct Status {
    id: String,
    a3: String,
    connected: bool,
    /// `QUIC`, or `TLS/TCP` on the fallback, while connected.
    transport: Option<&'static str>,
    addresses: Vec<String>,
    ssh: String,
    jobs: Vec<Job>,
    uptime_s: f64,
    version: &'static str,
    mode: &'static str,
}

#[derive(Serialize)]
struct Job {
    id: u64,
    what: String,
}

fn status_text(ctx: &Context, json: bool) -> String {
    let agent = &ctx.boot.agent;
    let addresses = if ctx.appliance {
        diag::interface_addresses()
            .into_iter()
            .map(|(nic, ip)| format!("{ip} on {nic}"))
            .collect()
    } else {
        // A process leaves the host's NICs alone: its address is the one it binds.
        vec![agent.bind.map_or("any (process)".to_owned(), |b| {
            format!("{} (process)", b.ip())
        })]
    };
    let s = Status {
        id: agent.id.clone(),
        a3: agent.a3_address.to_string(),
        connected: status::link().is_some(),
        transport: status::link(),
        addresses,
        ssh: ctx.listen.to_string(),
        jobs: status::jobs()
            .into_iter()
            .map(|(id, what)| Job { id, what })
            .collect(),
        uptime_s: (status::uptime_secs() * 10.0).round() / 10.0,
        version: env!("CARGO_PKG_VERSION"),
        mode: if ctx.appliance {
            "appliance"
        } else {
            "process"
        },
    };
    if json {
        return serde_json::to_string_pretty(&s).unwrap_or_else(|e| format!("\"{e}\"")) + "\n";
    }
    let jobs = if s.jobs.is_empty() {
        "none".to_owned()
    } else {
        s.jobs
            .iter()
            .map(|j| format!("{} ({})", j.id, j.what))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "ABD {} (abd-agent {}, {})\n\
         a3:        {} ({})\n\
         addresses: {}\n\
         ssh:       {}\n\
         jobs:      {jobs}\n\
         uptime:    {:.1} s\n",
        s.id,
        s.version,
        s.mode,
        s.a3,
        s.transport.map_or("not connected".to_owned(), |t| format!(
            "connected over {t}"
        )),
        s.addresses.join(", "),
        s.ssh,
        s.uptime_s,
    )
}

/// Flushes the file systems and reboots the VM (the appliance's `reboot` command).
pub fn reboot_now() {
    nix::unistd::sync();
    // reboot(2) returns only on failure.
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    tracing::error!("reboot: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootcfg::{self, cmdline_keys};

    fn ctx() -> Context {
        let keys = cmdline_keys(&format!(
            "abd.a3=127.0.0.1:2811 abd.id=abd-t abd.ca={}",
            "a".repeat(64)
        ));
        Context {
            boot: bootcfg::from_keys(&keys, None).unwrap(),
            listen: "127.0.0.1:2222".parse().unwrap(),
            appliance: false,
        }
    }

    #[tokio::test]
    async fn status_unknown_and_refused_reboot() {
        let ctx = ctx();
        let s = run(&ctx, "status").await;
        assert_eq!(s.status, 0);
        assert!(s.stdout.contains("ABD abd-t") && s.stdout.contains("not connected"));
        let j: serde_json::Value = serde_json::from_str(&run(&ctx, "status --json").await.stdout)
            .expect("status --json is JSON");
        assert_eq!(j["id"], "abd-t");
        let u = run(&ctx, "sh -c id").await;
        assert_eq!(u.status, UNKNOWN);
        assert!(u.stdout.contains("diag [--json]"), "{}", u.stdout);
        assert_eq!(run(&ctx, "").await.status, UNKNOWN);
        assert_eq!(run(&ctx, "status --yaml").await.status, USAGE);
        assert_eq!(run(&ctx, "logs --json").await.status, USAGE);
        let r = run(&ctx, "reboot").await;
        assert!(r.status == 1 && !r.reboot && r.stdout.contains("restart the process"));
    }
}
