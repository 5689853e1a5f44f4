//! Opening the device or file a job names. The A3 names a path; device ids (xenstore ids,
//! serials) are resolved by the appliance, never guessed.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The path the job means.
pub fn resolve(device: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(device);
    if !path.is_absolute() {
        bail!("device '{device}': not an absolute path (give /dev/xvdX or a file path)");
    }
    Ok(path.to_owned())
}

/// Opens `device` for reading and returns it with its size (works for block devices, whose
/// metadata length is 0).
pub fn open_read(device: &str) -> anyhow::Result<(File, u64)> {
    let path = resolve(device)?;
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
