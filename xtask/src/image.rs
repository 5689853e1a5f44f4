//! `cargo xtask image`: builds the ABD template into `target/abd-image/` (under
//! `$CARGO_TARGET_DIR` when set, where the tests look for it):
//! - `abd.img`: a BIOS-bootable raw disk of at most 32 MiB (MBR, FAT, syslinux, the Debian
//!   cloud kernel, an initramfs whose `/init` is the static `abd-agent`);
//! - `abd.vhd`: the same disk as a dynamic VHD;
//! - `abd.xva`: the template VM (128 MiB, one disk, one VIF) for `PUT /import`.
//!
//! The recipe (modules, bootloader config, VM metadata) is in the `abd-image` crate; this
//! file does the I/O with Debian's tools, as DESIGN §7 checked them on this machine (no loop
//! mounts). Same inputs, same bytes: file times are pinned, FAT ids are fixed
//! (`mkfs.fat --invariant`), and the cpio, VHD and XVA writers write no clock values.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use a3_shared::vhd::{self, DynamicLayout};
use a3_shared::xva::XvaWriter;
use abd_image::initramfs::{self, Entry};
use abd_image::{modules, recipe, template};
use anyhow::{Context, bail};

use crate::setup::{self, target_dir};

/// The static agent must stay small: it lives in a 128 MiB VM.
const MAX_AGENT_SIZE: u64 = 8 * 1024 * 1024;
/// The musl target the agent is built for.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The syslinux MBR from Debian's `syslinux-common`.
const MBR_BIN: &str = "/usr/lib/syslinux/mbr/mbr.bin";
/// File times inside the image: 2000-01-01, VHD's epoch, for reproducible bytes.
const FIXED_TIME: &str = "2000-01-01 00:00:00 UTC";
/// The footer id and time of the VHD: fixed, for reproducible bytes.
const VHD_UUID: [u8; 16] = *b"A3-ABD-TEMPLATE!";

/// Builds the agent, the initramfs, the disk image, the VHD and the XVA.
pub fn build() -> anyhow::Result<()> {
    setup::ensure_debian_tools(&[
        ("sfdisk", "fdisk"),
        ("mkfs.fat", "dosfstools"),
        ("mcopy", "mtools"),
        ("syslinux", "syslinux"),
        // C dependencies of the agent (zstd, ring) compile with musl's gcc wrapper.
        ("musl-gcc", "musl-tools"),
    ])?;
    if !Path::new(MBR_BIN).exists() {
        setup::apt_install(&["syslinux-common"])?;
    }
    let (kernel, modules_dir) = debian_cloud_kernel()?;
    let agent = build_agent()?;

    let out = target_dir().join("abd-image");
    fs::create_dir_all(&out)?;
    let initrd = out.join("initrd.img");
    write_initramfs(&agent, &modules_dir, &initrd)?;
    let syslinux_cfg = out.join("syslinux.cfg");
    fs::write(&syslinux_cfg, recipe::syslinux_cfg())?;

    let img = out.join("abd.img");
    assemble_disk(&img, &kernel, &initrd, &syslinux_cfg)?;
    let vhd = out.join("abd.vhd");
    write_vhd(&img, &vhd)?;
    let xva = out.join("abd.xva");
    write_xva(&img, &xva)?;
    for f in [&img, &vhd, &xva] {
        eprintln!(
            "xtask: wrote {} ({:.1} MiB)",
            f.display(),
            fs::metadata(f)?.len() as f64 / 1048576.0
        );
    }
    Ok(())
}

/// The newest installed Debian cloud kernel and its modules dir, installing the package when
/// none is there.
fn debian_cloud_kernel() -> anyhow::Result<(PathBuf, PathBuf)> {
    let find = || -> Option<(PathBuf, PathBuf)> {
        let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
            })
            .collect();
        kernels.sort();
        let kernel = kernels.pop()?;
        let version = kernel.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
        let modules = PathBuf::from("/lib/modules").join(version);
        modules
            .join("modules.dep")
            .exists()
            .then_some((kernel, modules))
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    setup::apt_install(&["linux-image-cloud-amd64"])?;
    find().context(
        "no Debian cloud kernel in /boot after installing linux-image-cloud-amd64; \
         run: apt-get install linux-image-cloud-amd64",
    )
}

/// Builds the static, stripped musl agent, adding the rustup target when missing.
fn build_agent() -> anyhow::Result<PathBuf> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup; the musl target is needed: rustup target add x86_64-unknown-linux-musl")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == MUSL_TARGET)
    {
        eprintln!("xtask: rustup target add {MUSL_TARGET}");
        let ok = Command::new("rustup")
            .args(["target", "add", MUSL_TARGET])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("could not add the musl target; run: rustup target add {MUSL_TARGET}");
        }
    }
    // A static non-PIE executable: as PID 1 of its own VM the agent gains little from a
    // randomised load address, and a static-pie carries 250 KB of relocations (.rela.dyn)
    // that its 8 MiB budget cannot spare.
    setup::cargo(&[
        "build",
        "--package",
        "abd-agent",
        "--profile",
        "agent",
        "--target",
        MUSL_TARGET,
        "--config",
        &format!("target.{MUSL_TARGET}.rustflags=[\"-C\", \"relocation-model=static\"]"),
    ])?;
    let agent = agent_path();
    let size = fs::metadata(&agent)?.len();
    if size > MAX_AGENT_SIZE {
        bail!(
            "the static agent is {:.1} MiB, over the 8 MiB budget of the 128 MiB appliance",
            size as f64 / 1048576.0
        );
    }
    Ok(agent)
}

/// Where `cargo xtask image` builds the static agent.
pub fn agent_path() -> PathBuf {
    target_dir().join(format!("{MUSL_TARGET}/agent/abd-agent"))
}

/// The initramfs: `/init` (the agent), the modules it loads with their load order, and the
/// mount points it needs, compressed with zstd (the cloud kernel has `CONFIG_RD_ZSTD`).
fn write_initramfs(agent: &Path, modules_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let dep = fs::read_to_string(modules_dir.join("modules.dep"))
        .with_context(|| format!("{}/modules.dep", modules_dir.display()))?;
    let order = modules::load_order(&dep, recipe::MODULES)?;
    let mut entries: Vec<Entry> = ["dev", "proc", "sys", "tmp", "etc", "etc/abd", "lib", "run"]
        .iter()
        .map(|d| Entry::Dir((*d).to_owned()))
        .collect();
    entries.push(Entry::Dir(recipe::MODULES_DIR.to_owned()));
    entries.push(Entry::File {
        path: recipe::INIT_PATH.to_owned(),
        mode: 0o755,
        data: fs::read(agent)?,
    });
    let mut load_list = String::new();
    for rel in &order {
        let path = modules_dir.join(rel);
        let data = read_module(&path)?;
        let name = Path::new(rel)
            .file_name()
            .and_then(|n| n.to_str())
            .context("module file name")?;
        // Modules are stored uncompressed, so plain finit_module loads them.
        let name = name
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_owned();
        load_list.push_str(&name);
        load_list.push('\n');
        entries.push(Entry::File {
            path: format!("{}/{name}", recipe::MODULES_DIR),
            mode: 0o644,
            data,
        });
    }
    entries.push(Entry::File {
        path: recipe::MODULES_LOAD_LIST.to_owned(),
        mode: 0o644,
        data: load_list.into_bytes(),
    });
    let mut cpio = Vec::new();
    initramfs::write_cpio(&entries, &mut cpio)?;
    let compressed = zstd::encode_all(&cpio[..], 19)?;
    fs::write(out, compressed)?;
    Ok(())
}

/// A module file's bytes, decompressing `.ko.xz` / `.ko.zst` with the system tools.
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return fs::read(path).with_context(|| format!("{name}: cannot read"));
    };
    let out = Command::new(tool)
        .args(["-dc"])
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool} to decompress {name}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name} failed");
    }
    Ok(out.stdout)
}

/// Lays out the raw disk: MBR with one bootable FAT partition at 1 MiB, the kernel,
/// initramfs and syslinux config on it, syslinux installed, and syslinux's MBR code.
fn assemble_disk(img: &Path, kernel: &Path, initrd: &Path, cfg: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_file(img);
    fs::File::create(img)?.set_len(recipe::IMAGE_SIZE)?;
    let disk = img.to_str().context("image path is not UTF-8")?;

    let table = format!(
        "label: dos\nlabel-id: 0xabd00001\nstart={}, type=c, bootable\n",
        recipe::PARTITION_OFFSET / 512
    );
    run_with_stdin(
        Command::new("sfdisk").args(["--quiet", "--no-reread", "--no-tell-kernel", disk]),
        table.as_bytes(),
    )?;
    let sectors = recipe::PARTITION_OFFSET / 512;
    let fat_kib = (recipe::IMAGE_SIZE - recipe::PARTITION_OFFSET) / 1024;
    run(Command::new("mkfs.fat")
        .args(["--invariant", "-n", "ABD", "-i", "ABD00001"])
        .arg(format!("--offset={sectors}"))
        .args([disk, &fat_kib.to_string()]))?;

    // mcopy -m keeps the source's time: pin it so that the FAT's dates are fixed.
    let staging = img.with_extension("staging");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    for (src, name) in [
        (kernel, "vmlinuz"),
        (initrd, "initrd.img"),
        (cfg, "syslinux.cfg"),
    ] {
        let dst = staging.join(name);
        fs::copy(src, &dst)?;
        run(Command::new("touch").args(["-d", FIXED_TIME]).arg(&dst))?;
    }
    let target = format!("{disk}@@{}", recipe::PARTITION_OFFSET);
    for name in ["vmlinuz", "initrd.img", "syslinux.cfg"] {
        run(Command::new("mcopy")
            .args(["-m", "-o", "-i", &target])
            .arg(staging.join(name))
            .arg(format!("::/{name}")))?;
    }
    fs::remove_dir_all(&staging)?;
    // syslinux writes ldlinux.* through mtools, which takes their dates from
    // SOURCE_DATE_EPOCH when set.
    run(Command::new("syslinux")
        .env("SOURCE_DATE_EPOCH", "946684800")
        .args(["--install", "--offset"])
        .arg(recipe::PARTITION_OFFSET.to_string())
        .arg(disk))?;

    let mut mbr = [0u8; 440];
    fs::File::open(MBR_BIN)
        .with_context(|| format!("{MBR_BIN} (package syslinux-common)"))?
        .read_exact(&mut mbr)?;
    fs::OpenOptions::new()
        .write(true)
        .open(img)?
        .write_all_at(&mbr, 0)?;
    Ok(())
}

fn write_vhd(img: &Path, out: &Path) -> anyhow::Result<()> {
    let disk = fs::File::open(img)?;
    let size = disk.metadata()?.len();
    let mut allocated = Vec::new();
    let mut buf = vec![0u8; vhd::BLOCK_SIZE as usize];
    for i in 0..size.div_ceil(vhd::BLOCK_SIZE) {
        let len = vhd::BLOCK_SIZE.min(size - i * vhd::BLOCK_SIZE) as usize;
        disk.read_exact_at(&mut buf[..len], i * vhd::BLOCK_SIZE)?;
        allocated.push(buf[..len].iter().any(|b| *b != 0));
    }
    // The VHD epoch itself as the time: no clock in the output.
    let layout = DynamicLayout::new(size, allocated, VHD_UUID, 946_684_800)?;
    let mut w = std::io::BufWriter::new(fs::File::create(out)?);
    layout.write_to(&mut w, |i, buf| {
        disk.read_exact_at(buf, i * vhd::BLOCK_SIZE)
    })?;
    w.flush()?;
    Ok(())
}

fn write_xva(img: &Path, out: &Path) -> anyhow::Result<()> {
    let disk = fs::File::open(img)?;
    let size = disk.metadata()?.len();
    let w = std::io::BufWriter::new(fs::File::create(out)?);
    let mut xva = XvaWriter::new(w, &template::template_ova(size))?;
    xva.write_disk(template::DISK_REF, size, |off, buf| {
        disk.read_exact_at(buf, off)
    })?;
    xva.finish()?.flush()?;
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> anyhow::Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    child.stdin.take().context("stdin")?.write_all(input)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
