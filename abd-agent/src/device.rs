//! Opening the disk a job names. An absolute path is used as it is; a device id (`xvdb`,
//! as xenstore names a VBD) is `<dev-dir>/<id>` under Xen (and in the process backend's
//! `dev/`), and under qemu the virtio disk whose serial is the id (`/dev/vdX` with
//! `/sys/block/vdX/serial` = `xvdb`; xapi-sim's qemu backend hot-plugs disks so). A
//! hot-plugged disk appears after `VBD.plug` returns, so the agent waits for either, with a
//! deadline, and never guesses.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

/// Where device ids resolve: `/dev` in the appliance; the process backend's `dev/` dir.
static DEV_DIR: OnceLock<PathBuf> = OnceLock::new();
/// Where the kernel lists block devices with their serials.
pub const SYS_BLOCK: &str = "/sys/block";
/// How long a hot-plugged disk may take to appear (the simulator copies snapshot content
/// into its device file before showing it).
const APPEAR_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// Sets the directory device ids resolve under (once, at start; default `/dev`).
pub fn set_dev_dir(dir: PathBuf) {
    let _ = DEV_DIR.set(dir);
}

/// Where device ids resolve (`/dev` in the appliance).
pub fn dev_dir() -> &'static Path {
    DEV_DIR.get_or_init(|| PathBuf::from("/dev"))
}

/// The block device whose serial (`<sys_block>/<name>/serial`, as virtio disks show it) is
/// `serial`: `<dev>/<name>`, once its device node exists.
pub fn by_serial(sys_block: &Path, dev: &Path, serial: &str) -> Option<PathBuf> {
    std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .find(|entry| {
            std::fs::read_to_string(entry.path().join("serial"))
                .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial)
        })
        .map(|entry| dev.join(entry.file_name()))
        .filter(|path| path.exists())
}

/// Whether `device` is an id (`xvdb`, `vdb`: letters and digits only) rather than a path.
fn check_id(device: &str) -> anyhow::Result<()> {
    if device.is_empty() || !device.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("device '{device}': give a device id such as xvdb, or an absolute path");
    }
    Ok(())
}

/// Where an id is right now: `<dev-dir>/<id>`, else the block device with that serial.
fn find(dev: &Path, sys_block: &Path, id: &str) -> Option<PathBuf> {
    let direct = dev.join(id);
    if direct.exists() {
        return Some(direct);
    }
    by_serial(sys_block, dev, id)
}

/// The path the job means; for a device id, waits until the disk has appeared.
pub async fn resolve(device: &str) -> anyhow::Result<PathBuf> {
    resolve_in(dev_dir(), Path::new(SYS_BLOCK), device, APPEAR_DEADLINE).await
}

async fn resolve_in(
    dev: &Path,
    sys_block: &Path,
    device: &str,
    deadline: Duration,
) -> anyhow::Result<PathBuf> {
    if Path::new(device).is_absolute() {
        return Ok(PathBuf::from(device));
    }
    check_id(device)?;
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(path) = find(dev, sys_block, device) {
            return Ok(path);
        }
        if tokio::time::Instant::now() >= give_up {
            bail!(
                "device '{device}': neither {} nor a disk with serial '{device}' in {} \
                 appeared within {}s; is its VBD plugged into this ABD?",
                dev.join(device).display(),
                sys_block.display(),
                deadline.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `BLKROSET` from linux/fs.h: `_IO(0x12, 93)`.
const BLKROSET: u32 = 0x125d;

/// Opens `device` for reading (`O_RDONLY`) and returns it with its size (works for block
/// devices, whose metadata length is 0). A block device is first set read-only in the
/// kernel: an HVM ABD gets snapshot disks plugged read-write (xapi refuses read-only disks
/// for HVM guests), and nothing in the guest may write them.
pub async fn open_read(device: &str) -> anyhow::Result<(File, u64)> {
    let path = resolve(device).await?;
    let mut f =
        File::open(&path).with_context(|| format!("device {}: cannot open", path.display()))?;
    if is_block_device(&f) {
        set_read_only(&f).with_context(|| {
            format!(
                "device {}: cannot set it read-only (BLKROSET)",
                path.display()
            )
        })?;
    }
    let size = f
        .seek(SeekFrom::End(0))
        .with_context(|| format!("device {}: cannot find its size", path.display()))?;
    Ok((f, size))
}

/// Makes the kernel refuse writes to the block device `f` until it is set read-write.
fn set_read_only(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: BLKROSET reads one int through the pointer, which outlives the call; the fd
    // is open for the call's duration.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKROSET as _, &on) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `f` is a block device (zero ranges must then be written, not left as holes).
pub fn is_block_device(f: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    f.metadata().is_ok_and(|m| m.file_type().is_block_device())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("abd-device-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn ids_resolve_under_the_dev_dir_once_they_appear() {
        let dir = scratch("dev");
        let sys = dir.join("sys-block"); // empty: no serials
        std::fs::create_dir_all(&sys).unwrap();
        let late = dir.join("xvdc");
        let writer = {
            let late = late.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::fs::write(late, b"disk").unwrap();
            })
        };
        let got = resolve_in(&dir, &sys, "xvdc", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got, late);
        writer.await.unwrap();

        let err = resolve_in(&dir, &sys, "xvdq", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("appeared within"), "{err:#}");
        let err = resolve_in(&dir, &sys, "../etc/passwd", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("device id"), "{err:#}");
        let abs = resolve_in(&dir, &sys, "/some/file.img", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(abs, Path::new("/some/file.img"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fake `/sys/block` entry: `<sys>/<name>/serial`.
    fn sys_disk(sys: &Path, name: &str, serial: Option<&str>) {
        std::fs::create_dir_all(sys.join(name)).unwrap();
        if let Some(serial) = serial {
            std::fs::write(sys.join(name).join("serial"), format!("{serial}\n")).unwrap();
        }
    }

    #[tokio::test]
    async fn ids_resolve_to_the_disk_with_that_serial_and_never_to_another() {
        let dir = scratch("serial");
        let (dev, sys) = (dir.join("dev"), dir.join("sys-block"));
        std::fs::create_dir_all(&dev).unwrap();
        sys_disk(&sys, "sda", None); // the boot disk (IDE): no serial file
        sys_disk(&sys, "vda", Some("abd-config"));
        sys_disk(&sys, "vdb", Some("xvdc"));
        for name in ["sda", "vda", "vdb"] {
            std::fs::write(dev.join(name), b"").unwrap();
        }
        // The hot-plugged disk shows up later, as vdc with serial xvdb.
        let plug = {
            let (dev, sys) = (dev.clone(), sys.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::fs::write(dev.join("vdc"), b"").unwrap();
                sys_disk(&sys, "vdc", Some("xvdb"));
            })
        };
        let got = resolve_in(&dev, &sys, "xvdb", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got, dev.join("vdc"));
        plug.await.unwrap();
        assert_eq!(
            resolve_in(&dev, &sys, "xvdc", Duration::ZERO)
                .await
                .unwrap(),
            dev.join("vdb")
        );
        // No disk has serial xvdd: an error naming both places, not some other disk.
        let err = resolve_in(&dev, &sys, "xvdd", Duration::ZERO)
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("serial 'xvdd'") && msg.contains("xvdd"),
            "{msg}"
        );
        // The dev-dir name wins when it exists (Xen, the process backend).
        std::fs::write(dev.join("xvdc"), b"").unwrap();
        assert_eq!(
            resolve_in(&dev, &sys, "xvdc", Duration::ZERO)
                .await
                .unwrap(),
            dev.join("xvdc")
        );
        // A serial whose device node is not there yet does not count.
        sys_disk(&sys, "vdd", Some("xvde"));
        assert!(by_serial(&sys, &dev, "xvde").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
