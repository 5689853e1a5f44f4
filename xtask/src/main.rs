//! `cargo xtask …`: the project's own tasks (tests with their set-up, benchmarks).
//!
//! Every task installs what it needs when it is missing (Debian packages, pip packages,
//! rustup targets), or says exactly what to run.

mod bench_backup;
mod bench_image;
mod bench_sparse;
mod bench_xapi;
mod demo;
mod faults;
mod fuzz;
mod image;
mod setup;
mod xen;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the tests need, check formatting and lints, and run every test.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The ABD on a real Xen 4.17 hypervisor under qemu TCG (Debian's packages, not
    /// installed): HVM boot from the A3's NFS SR, xenstore config, a hot-plugged disk backed
    /// up bit-exact. Downloads about 80 MB once into target/xen/debs.
    TestXen {
        /// Only build the dom0 bundle in target/xen (xen, vmlinuz, dom0.img).
        #[arg(long)]
        bundle_only: bool,
    },
    /// Run the product on a simulated pool: discovery, a backup, an incremental, restores.
    Demo {
        /// Leave the simulator, the A3 and the agent running afterwards.
        #[arg(long)]
        keep_running: bool,
    },
    /// Build the ABD template: target/abd-image/abd.img, abd.vhd and abd.xva.
    Image,
    /// Run the fuzz targets (every parser of untrusted bytes) for a while each.
    Fuzz {
        /// One target (default: all of them).
        target: Option<String>,
        /// How long to fuzz each target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// The fault sweeps at full size: 12,000 corruptions of the store, each of which
    /// verify must name; the last line printed is JSON.
    Faults,
    /// Benchmarks that print ratios against peers measured in the same run.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// A full inventory sync of 3 hosts and 1,000 VMs (2,000 VDIs) from xapi-sim; goal < 1 s.
    Xapi,
    /// The ABD appliance under qemu (TCG, 128 MiB): boot-to-connected time, the agent's
    /// peak RSS over a 1 GiB backup and restore, the guest's free memory, image and agent
    /// sizes, against their goals.
    Image,
    /// A disk image backed up, re-backed up, incrementally backed up (CBT) and restored by
    /// the A3 over QUIC, side by side with restic and borg; prints ratios and the goals.
    Backup {
        /// The image size (e.g. 4G, 2G, 512M).
        #[arg(long, default_value = "4G", value_parser = bench_backup::parse_size)]
        size: u64,
    },
    /// A full backup of a mostly empty disk (zeros to read), against a plain sequential
    /// read of the same device; prints the time, the ratio and CPU seconds per GiB.
    Sparse {
        /// The device size (e.g. 2T, 64G).
        #[arg(long, default_value = "64G", value_parser = bench_backup::parse_size)]
        size: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test { args } => test(&args),
        Task::TestXen { bundle_only } => xen::test(bundle_only),
        Task::Demo { keep_running } => demo::run(keep_running),
        Task::Image => image::build(),
        Task::Fuzz { target, seconds } => fuzz::run(target.as_deref(), seconds),
        Task::Faults => faults::run(),
        Task::Bench { bench } => match bench {
            Bench::Xapi => bench_xapi::run(),
            Bench::Image => bench_image::run(),
            Bench::Backup { size } => bench_backup::run(size),
            Bench::Sparse { size } => bench_sparse::run(size),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn test(args: &[String]) -> anyhow::Result<()> {
    // A cold run leaves about 7 GiB in target/debug; linking needs headroom on top.
    setup::warn_if_low_on_space(12);
    setup::ensure_python_module("XenAPI", "XenAPI")?;
    setup::ensure_debian_tools(setup::TEST_TOOLS)?;
    setup::ensure_qemu()?;
    setup::cargo(&["fmt", "--all", "--", "--check"])?;
    setup::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // End-to-end tests start the workspace's binaries as processes, and the qemu ones boot
    // the ABD image.
    // The crash points compile only with the feature: lint that build too.
    setup::cargo(&[
        "clippy",
        "-p",
        "a3-server",
        "--features",
        "failpoints",
        "--",
        "-D",
        "warnings",
    ])?;
    setup::cargo(&["build", "--workspace", "--bins"])?;
    faults::build_failpoints_server()?;
    image::build()?;
    let mut test_args = vec!["test", "--workspace"];
    test_args.extend(args.iter().map(String::as_str));
    setup::cargo(&test_args)
}
