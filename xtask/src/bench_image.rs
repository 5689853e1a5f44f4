//! `cargo xtask bench image`: the ABD appliance's figures against its goals, measured by
//! booting the built image under qemu (TCG, 128 MiB) in the DHCP end-to-end test, which
//! backs up and restores a 1 GiB disk from inside the guest and prints boot-to-connected
//! time, the agent's peak RSS and the guest's free memory. The image and agent sizes are
//! read from the build. There is no peer appliance to run beside it, so the figures are
//! shown against the goals of issue 5 and DESIGN.md §5.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{image, setup};

/// The line the qemu test prints its measurements on.
const MEASURE_PREFIX: &str = "abd qemu (TCG, 128 MiB):";

/// Builds the image, runs the measuring test, prints the figures and the goals.
pub fn run() -> anyhow::Result<()> {
    setup::ensure_qemu()?;
    setup::cargo(&["build", "--workspace", "--bins"])?;
    image::build()?;
    let out_dir = setup::target_dir().join("abd-image");
    let img = std::fs::metadata(out_dir.join("abd.img"))
        .context("abd.img was not built")?
        .len();
    let agent = std::fs::metadata(image::agent_path())
        .context("the musl agent was not built")?
        .len();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: booting the image under qemu for a 1 GiB backup and restore (minutes)");
    let output = Command::new(cargo)
        .args(["test", "-p", "a3-e2e", "--test", "abd_qemu"])
        .args([
            "--",
            "--exact",
            "dhcp_boot_connects_passes_diag_and_round_trips_1gib",
        ])
        .arg("--nocapture")
        .current_dir(setup::workspace_root())
        .output()
        .context("running the qemu test")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the qemu test failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let measured = stdout
        .lines()
        .find(|l| l.starts_with(MEASURE_PREFIX))
        .with_context(|| format!("the qemu test printed no '{MEASURE_PREFIX}' line:\n{stdout}"))?;
    println!("ABD appliance (qemu TCG, 128 MiB guest, this machine):");
    println!("  {}", measured.trim_start_matches(MEASURE_PREFIX).trim());
    println!(
        "  image {:.1} MiB (goal <= 32 MiB); agent {:.2} MiB (goal <= 8 MiB); agent peak RSS \
         goal <= 48 MiB",
        img as f64 / 1048576.0,
        agent as f64 / 1048576.0
    );
    Ok(())
}
