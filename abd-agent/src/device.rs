//! Opening the disk a job names. An absolute path is used as it is; a device id (`xvdb`,
//! as xenstore names a VBD) is `<dev-dir>/<id>`, where a hot-plugged disk appears after
//! `VBD.plug` returns, so the agent waits for it, with a deadline, and never guesses.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

/// Where device ids resolve: `/dev` in the appliance; the process backend's `dev/` dir.
static DEV_DIR: OnceLock<PathBuf> = OnceLock::new();
/// How long a hot-plugged disk may take to appear (the simulator copies snapshot content
/// into its device file before showing it).
const APPEAR_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// Sets the directory device ids resolve under (once, at start; default `/dev`).
pub fn set_dev_dir(dir: PathBuf) {
    let _ = DEV_DIR.set(dir);
}

fn dev_dir() -> &'static Path {
    DEV_DIR.get_or_init(|| PathBuf::from("/dev"))
}

/// The path a job's `device` means, without waiting: absolute paths as they are, device
/// ids (`xvdb`, `vdb`: letters and digits only) under the dev dir.
fn path_of(dir: &Path, device: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(device);
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    if device.is_empty() || !device.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("device '{device}': give a device id such as xvdb, or an absolute path");
    }
    Ok(dir.join(device))
}

/// The path the job means; for a device id, waits until the disk has appeared.
pub async fn resolve(device: &str) -> anyhow::Result<PathBuf> {
    resolve_in(dev_dir(), device, APPEAR_DEADLINE).await
}

async fn resolve_in(dir: &Path, device: &str, deadline: Duration) -> anyhow::Result<PathBuf> {
    let path = path_of(dir, device)?;
    if Path::new(device).is_absolute() {
        return Ok(path);
    }
    let give_up = tokio::time::Instant::now() + deadline;
    while !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        if tokio::time::Instant::now() >= give_up {
            bail!(
                "device '{device}': {} did not appear within {}s; is its VBD plugged into \
                 this ABD?",
                path.display(),
                deadline.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(path)
}

/// Opens `device` for reading and returns it with its size (works for block devices, whose
/// metadata length is 0).
pub async fn open_read(device: &str) -> anyhow::Result<(File, u64)> {
    let path = resolve(device).await?;
    let mut f =
        File::open(&path).with_context(|| format!("device {}: cannot open", path.display()))?;
    let size = f
        .seek(SeekFrom::End(0))
        .with_context(|| format!("device {}: cannot find its size", path.display()))?;
    Ok((f, size))
}

/// Whether `f` is a block device (zero ranges must then be written, not left as holes).
pub fn is_block_device(f: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    f.metadata().is_ok_and(|m| m.file_type().is_block_device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_resolve_under_the_dev_dir_once_they_appear() {
        let dir = std::env::temp_dir().join(format!("abd-device-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let late = dir.join("xvdc");
        let _ = std::fs::remove_file(&late);
        let writer = {
            let late = late.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::fs::write(late, b"disk").unwrap();
            })
        };
        let got = resolve_in(&dir, "xvdc", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got, late);
        writer.await.unwrap();

        let err = resolve_in(&dir, "xvdq", Duration::ZERO).await.unwrap_err();
        assert!(format!("{err:#}").contains("did not appear"), "{err:#}");
        let err = resolve_in(&dir, "../etc/passwd", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("device id"), "{err:#}");
        let abs = resolve_in(&dir, "/some/file.img", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(abs, Path::new("/some/file.img"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
