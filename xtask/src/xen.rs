//! `cargo xtask test-xen`: the ABD on a real Xen hypervisor (issue 10, DESIGN §7).
//!
//! Builds a bundle in `target/xen/` from Debian's own packages, the Xen 4.17 that XCP-ng 8.3
//! runs:
//! - `xen` (the hypervisor, uncompressed for qemu's multiboot loader) and `vmlinuz` (Debian's
//!   generic kernel: the cloud kernel has no `CONFIG_XEN_DOM0`);
//! - `dom0.img`, an initramfs with `xl`, xenstored, xenconsoled, the HVM device model
//!   (`qemu-system-xen`, hvmloader, SeaBIOS), the hotplug scripts and what they run, an NFS
//!   client (`mount.nfs`, `rpc.statd`, `rpcbind`, `showmount`, `rpcinfo`), busybox, and the
//!   modules dom0 needs. Its `/init` is `xen/dom0-init.sh`.
//!
//! The packages come from the machine's apt sources with `apt-get download` (cached in
//! `target/xen/debs`) and are unpacked with `dpkg-deb -x`; nothing is installed. Libraries the
//! packages do not carry are taken from this machine (Debian 12, as the packages), found with
//! `ldd`. Then `tests/tests/abd_xen.rs` boots it under qemu TCG and runs its sequence in dom0.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use abd_image::initramfs::{self, Entry};
use abd_image::modules;
use anyhow::{Context, bail};

use crate::setup::{self, target_dir};

/// The Debian packages unpacked into the bundle; the kernel package is added by version.
const PACKAGES: &[&str] = &[
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "xen-utils-common",
    "xenstore-utils",
    "libxenmisc4.17",
    "libxenstore4",
    "libxencall1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxentoollog1",
    "libxentoolcore1",
    "libxendevicemodel1",
    "libxenhypfs1",
    "libyajl2",
    "qemu-system-xen",
    "qemu-system-data",
    "seabios",
    "busybox-static",
    "nfs-common",
    "rpcbind",
];

/// Programs dom0 runs, from the unpacked packages (`root/…`) or from this machine (`/…`).
/// The hotplug scripts need bash, `losetup`, `flock` and `ip` (DESIGN §7); busybox's
/// versions of those differ in options the scripts use.
const PROGRAMS: &[&str] = &[
    "root/bin/busybox",
    "root/usr/libexec/xen-qemu-system-i386",
    "root/sbin/mount.nfs",
    "root/sbin/rpc.statd",
    "root/sbin/rpcbind",
    "root/sbin/showmount",
    "root/usr/sbin/rpcinfo",
    "/bin/bash",
    "/sbin/losetup",
    "/usr/bin/flock",
    "/sbin/ip",
];

/// Directories copied whole from the unpacked packages: Xen's programs and firmware, the
/// xenstore tools, the hotplug scripts, and the device model's data (keymaps, option ROMs,
/// SeaBIOS).
const TREES: &[&str] = &[
    "usr/lib/xen-4.17",
    "etc/xen",
    "usr/share/qemu",
    "usr/share/seabios",
];

/// Left out of those trees: pygrub's Python module (HVM guests boot from their disk).
const SKIP: &[&str] = &["usr/lib/xen-4.17/lib/python"];

/// The xenstore tools (`usr/bin/xenstore-*`) are copied by prefix.
const XENSTORE_TOOLS: &str = "usr/bin";

/// The modules dom0 loads: Xen's devices (`/dev/xen/*` for xl and the device model, the
/// block and network back-ends), the bridge and loop devices the hotplug scripts use, the
/// NFS v3 client, and the NIC of qemu's user network.
const DOM0_MODULES: &[&str] = &[
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xenfs",
    "xen-blkback",
    "xen-netback",
    "bridge",
    "loop",
    "nfsv3",
    "e1000",
];

/// Where the bundle lives.
pub fn bundle_dir() -> PathBuf {
    target_dir().join("xen")
}

/// `cargo xtask test-xen`: builds the bundle, then (unless `bundle_only`) the workspace's
/// binaries and the ABD image, and runs the real-Xen test.
pub fn test(bundle_only: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    build_bundle()?;
    eprintln!(
        "xtask: Xen bundle ready in {} ({:.0} s)",
        bundle_dir().display(),
        started.elapsed().as_secs_f64()
    );
    if bundle_only {
        return Ok(());
    }
    setup::ensure_qemu()?;
    setup::cargo(&["build", "--workspace", "--bins"])?;
    crate::image::build()?;
    setup::cargo(&[
        "test",
        "--package",
        "a3-e2e",
        "--test",
        "abd_xen",
        "--",
        "--ignored",
        "--nocapture",
    ])?;
    eprintln!(
        "xtask: test-xen passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn build_bundle() -> anyhow::Result<()> {
    setup::ensure_debian_tools(&[
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("ldd", "libc-bin"),
        ("bash", "bash"),
        ("losetup", "mount"),
        ("flock", "util-linux"),
        ("ip", "iproute2"),
        ("depmod", "kmod"),
        // The device model's shared libraries are those of Debian's qemu.
        ("qemu-system-x86_64", "qemu-system-x86"),
    ])?;
    let dir = bundle_dir();
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    let kernel_pkg = generic_kernel_package()?;
    let mut packages: Vec<&str> = PACKAGES.to_vec();
    packages.push(&kernel_pkg);
    download(&debs, &packages)?;

    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    for pkg in &packages {
        let deb = cached_deb(&debs, pkg)?.context("downloaded above")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }

    let version = kernel_pkg
        .strip_prefix("linux-image-")
        .context("kernel package name")?;
    // The package leaves modules.dep to its install script.
    run(Command::new("depmod").arg("-b").arg(&root).arg(version))?;
    // qemu's multiboot loader takes an uncompressed image.
    let xen = Command::new("gzip")
        .arg("-dc")
        .arg(root.join("boot/xen-4.17-amd64.gz"))
        .output()
        .context("cannot run gzip")?;
    if !xen.status.success() {
        bail!("gzip -dc boot/xen-4.17-amd64.gz failed");
    }
    fs::write(dir.join("xen"), xen.stdout)?;
    fs::copy(
        root.join(format!("boot/vmlinuz-{version}")),
        dir.join("vmlinuz"),
    )?;

    let mut files = Files::default();
    for tree in TREES {
        files.add_tree(&root, &root.join(tree))?;
    }
    for entry in fs::read_dir(root.join(XENSTORE_TOOLS))? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("xenstore"))
        {
            files.add_file(&root, &path)?;
        }
    }
    for prog in PROGRAMS {
        let path = match prog.strip_prefix("root/") {
            Some(rel) => root.join(rel),
            None => PathBuf::from(prog),
        };
        files.add_file(&root, &path)?;
    }
    files.add_libraries(&root)?;
    files.add_modules(&root.join(format!("lib/modules/{version}")))?;
    files.add_config()?;

    let mut cpio = Vec::new();
    initramfs::write_cpio(&files.entries(), &mut cpio)?;
    fs::write(dir.join("dom0.img"), zstd::encode_all(&cpio[..], 3)?)?;
    eprintln!(
        "xtask: wrote {} ({:.1} MiB, {} files)",
        dir.join("dom0.img").display(),
        fs::metadata(dir.join("dom0.img"))?.len() as f64 / 1048576.0,
        files.files.len()
    );
    Ok(())
}

/// The versioned package `linux-image-amd64` depends on (the generic kernel).
fn generic_kernel_package() -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("cannot run apt-cache")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_owned)
        .context(
            "apt-cache knows no linux-image-amd64; run apt-get update (Debian 12's main archive is needed)",
        )
}

/// The cached `.deb` of `pkg`, if any.
fn cached_deb(debs: &Path, pkg: &str) -> anyhow::Result<Option<PathBuf>> {
    let prefix = format!("{pkg}_");
    Ok(fs::read_dir(debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        }))
}

/// Downloads the packages not cached yet with `apt-get download`.
fn download(debs: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for pkg in packages {
        if cached_deb(debs, pkg)?.is_none() {
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: apt-get download {}", missing.join(" "));
    let fetch = || {
        Command::new("apt-get")
            .arg("download")
            .args(&missing)
            .current_dir(debs)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !fetch() {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        if !fetch() {
            bail!(
                "apt-get download failed for {}; run: cd {} && apt-get update && apt-get download {}",
                missing.join(" "),
                debs.display(),
                missing.join(" ")
            );
        }
    }
    Ok(())
}

/// The initramfs's files: destination path (without a leading `/`) to source file and mode.
/// Symbolic links are followed: the cpio writer stores files and directories only.
#[derive(Default)]
struct Files {
    files: BTreeMap<String, (PathBuf, u32)>,
    /// Data written by the bundle itself (module list, configuration files).
    generated: BTreeMap<String, Vec<u8>>,
}

impl Files {
    /// Adds `path` at its place relative to `root` (or to `/` when outside `root`).
    fn add_file(&mut self, root: &Path, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dest = path
            .strip_prefix(root)
            .or_else(|_| path.strip_prefix("/"))
            .with_context(|| format!("{}: not an absolute path", path.display()))?
            .to_string_lossy()
            .into_owned();
        let meta = fs::metadata(path).with_context(|| format!("{}: missing", path.display()))?;
        self.files
            .insert(dest, (path.to_owned(), meta.permissions().mode() & 0o7777));
        Ok(())
    }

    fn add_tree(&mut self, root: &Path, dir: &Path) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue; // a dangling link (to a file of a package not unpacked)
            };
            if SKIP.iter().any(|s| path == root.join(s)) {
                continue;
            }
            if meta.is_dir() {
                self.add_tree(root, &path)?;
            } else {
                self.add_file(root, &path)?;
            }
        }
        Ok(())
    }

    /// Adds the shared libraries of every ELF file, as `ldd` resolves them with the unpacked
    /// packages' libraries first. All go to `usr/lib/x86_64-linux-gnu` (dom0's `/init` puts
    /// it on `LD_LIBRARY_PATH`), the loader to its fixed path.
    fn add_libraries(&mut self, root: &Path) -> anyhow::Result<()> {
        let lib_path = format!(
            "{}:{}",
            root.join("usr/lib/x86_64-linux-gnu").display(),
            root.join("lib/x86_64-linux-gnu").display()
        );
        let mut libs: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut missing = Vec::new();
        for (src, _) in self.files.values() {
            if !is_dynamic_elf(src) {
                continue;
            }
            let out = Command::new("ldd")
                .arg(src)
                .env("LD_LIBRARY_PATH", &lib_path)
                .output()
                .context("cannot run ldd")?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let line = line.trim();
                if let Some((name, rest)) = line.split_once(" => ") {
                    let path = rest.split(" (").next().unwrap_or(rest).trim();
                    if path == "not found" {
                        missing.push(format!("{name} (for {})", src.display()));
                    } else {
                        libs.insert(
                            format!("usr/lib/x86_64-linux-gnu/{name}"),
                            PathBuf::from(path),
                        );
                    }
                } else if line.starts_with("/lib64/ld-linux") {
                    let path = line.split(" (").next().unwrap_or(line);
                    libs.insert(path.trim_start_matches('/').to_owned(), PathBuf::from(path));
                }
            }
        }
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            bail!(
                "shared libraries missing on this machine: {}; install Debian's qemu-system-x86 and nfs-common (apt-get install -y qemu-system-x86 nfs-common)",
                missing.join(", ")
            );
        }
        for (dest, src) in libs {
            self.files.insert(dest, (src, 0o755));
        }
        Ok(())
    }

    /// The modules dom0 loads and their dependencies, with their load order in
    /// `etc/dom0-modules.load`.
    fn add_modules(&mut self, modules_dir: &Path) -> anyhow::Result<()> {
        let dep = fs::read_to_string(modules_dir.join("modules.dep"))
            .with_context(|| format!("{}/modules.dep", modules_dir.display()))?;
        let mut list = String::new();
        for rel in modules::load_order(&dep, DOM0_MODULES)? {
            let name = Path::new(&rel)
                .file_name()
                .and_then(|n| n.to_str())
                .context("module file name")?
                .to_owned();
            if name.ends_with(".xz") || name.ends_with(".zst") {
                bail!("{rel}: compressed modules are not expected in Debian 12's kernel");
            }
            self.files.insert(
                format!("lib/modules/{name}"),
                (modules_dir.join(&rel), 0o644),
            );
            list.push_str(&name);
            list.push('\n');
        }
        self.generated
            .insert("etc/dom0-modules.load".into(), list.into_bytes());
        Ok(())
    }

    /// `/init` and the files the NFS client's tools look up: libtirpc's `/etc/netconfig`,
    /// service and protocol names, and the `_rpc` user rpcbind and rpc.statd drop to.
    fn add_config(&mut self) -> anyhow::Result<()> {
        let xen = setup::workspace_root().join("xen");
        self.files
            .insert("init".into(), (xen.join("dom0-init.sh"), 0o755));
        for (path, text) in [
            ("etc/netconfig", NETCONFIG),
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\n_rpc:x:105:65534::/run/rpcbind:/usr/sbin/nologin\nstatd:x:106:65534::/var/lib/nfs:/usr/sbin/nologin\n",
            ),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
            // libtirpc looks up rpcbind's port by service name ("sunrpc").
            (
                "etc/services",
                "sunrpc 111/tcp portmapper\nsunrpc 111/udp portmapper\nnfs 2049/tcp\nnfs 2049/udp\n",
            ),
            ("etc/protocols", "ip 0 IP\ntcp 6 TCP\nudp 17 UDP\n"),
        ] {
            self.generated.insert(path.into(), text.as_bytes().to_vec());
        }
        Ok(())
    }

    /// The cpio entries: every parent directory first, then the files.
    fn entries(&self) -> Vec<Entry> {
        let mut dirs = std::collections::BTreeSet::new();
        let all = self.files.keys().chain(self.generated.keys());
        for path in all {
            let mut p = Path::new(path).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(d.to_string_lossy().into_owned());
                p = d.parent();
            }
        }
        for d in DOM0_DIRS {
            dirs.insert((*d).to_owned());
        }
        let mut entries: Vec<Entry> = dirs.into_iter().map(Entry::Dir).collect();
        for (dest, (src, mode)) in &self.files {
            entries.push(Entry::File {
                path: dest.clone(),
                mode: *mode,
                data: fs::read(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())),
            });
        }
        for (dest, data) in &self.generated {
            entries.push(Entry::File {
                path: dest.clone(),
                mode: 0o644,
                data: data.clone(),
            });
        }
        entries
    }
}

/// Mount points and state directories dom0's programs expect.
const DOM0_DIRS: &[&str] = &[
    "bin",
    "sbin",
    "dev",
    "proc",
    "sys",
    "tmp",
    "run",
    "mnt",
    "var",
    "var/lib",
    "var/lib/xen",
    "var/lib/nfs",
    "var/lib/nfs/sm",
    "var/lib/nfs/sm.bak",
    "var/log",
    "var/log/xen",
    "root",
];

/// libtirpc's transport list, as Debian's `libtirpc-common` ships it.
const NETCONFIG: &str = "udp        tpi_clts      v     inet     udp     -       -\n\
tcp        tpi_cots_ord  v     inet     tcp     -       -\n\
udp6       tpi_clts      v     inet6    udp     -       -\n\
tcp6       tpi_cots_ord  v     inet6    tcp     -       -\n\
rawip      tpi_raw       -     inet      -      -       -\n\
local      tpi_cots_ord  -     loopback  -      -       -\n\
unix       tpi_cots_ord  -     loopback  -      -       -\n";

fn is_dynamic_elf(path: &Path) -> bool {
    let Ok(data) = fs::read(path) else {
        return false;
    };
    // An ELF with a PT_INTERP program header (type 3) is dynamically linked.
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        data.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) == 3)
    }) || data[16] == 3 // ET_DYN without an interpreter: a shared library
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
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
