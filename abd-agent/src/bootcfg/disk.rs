//! The config disk: a block device whose serial is [`SERIAL`], holding `key=value` lines
//! (the `vm-data/abd/*` keys without the prefix), NUL-padded to the disk's size. A
//! hypervisor with neither xenstore nor a kernel command line of its own to give (xapi-sim's
//! qemu backend) attaches it as a virtio disk.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::Context;

use crate::device;

/// The serial the config disk carries.
pub const SERIAL: &str = "abd-config";
/// How much of the disk is read: the keys are a few hundred bytes.
const MAX_BYTES: u64 = 64 << 10;

/// The keys on the config disk; empty when there is none.
pub fn keys(sys_block: &Path, dev: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let Some(path) = device::by_serial(sys_block, dev, SERIAL) else {
        return Ok(BTreeMap::new());
    };
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_BYTES).read_to_end(&mut bytes))
        .with_context(|| format!("config disk {}: cannot read", path.display()))?;
    let text =
        std::str::from_utf8(&bytes[..bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len())])
            .with_context(|| format!("config disk {}: not UTF-8 text", path.display()))?;
    Ok(parse(text))
}

/// `key=value` lines; blank lines and `#` comments are skipped, and so (with a warning) is
/// a line without `=`.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Some((k.trim().to_owned(), v.trim().to_owned()))
            }
            _ => {
                tracing::warn!("config disk: skipping {l:?}: expected key=value");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_keys_and_values_to_the_end_of_the_line() {
        let keys = parse(
            "# written by xapi-sim\na3=10.0.2.2:40123\n\n  ip = dhcp \nsshkey=ssh-ed25519 AAAA a3@x\n\
             garbage\n=nokey\ndns=10.0.2.2:5353,10.0.2.2\n",
        );
        let want: BTreeMap<String, String> = [
            ("a3", "10.0.2.2:40123"),
            ("ip", "dhcp"),
            ("sshkey", "ssh-ed25519 AAAA a3@x"),
            ("dns", "10.0.2.2:5353,10.0.2.2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(keys, want);
    }

    #[test]
    fn the_disk_is_found_by_serial_and_read_up_to_the_padding() {
        let dir = std::env::temp_dir().join(format!("abd-config-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (sys, dev) = (dir.join("sys-block"), dir.join("dev"));
        for d in ["vda", "vdb"] {
            std::fs::create_dir_all(sys.join(d)).unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        assert!(
            keys(&sys, &dev).unwrap().is_empty(),
            "no config disk: no keys"
        );

        std::fs::write(sys.join("vda/serial"), "xvdb\n").unwrap();
        std::fs::write(sys.join("vdb/serial"), "abd-config\n").unwrap();
        let mut disk = b"a3=10.0.2.2:2811\nid=abd-1\n".to_vec();
        disk.resize(4096, 0);
        std::fs::write(dev.join("vdb"), &disk).unwrap();
        std::fs::write(dev.join("vda"), b"id=not-this-one\n").unwrap();
        let got = keys(&sys, &dev).unwrap();
        assert_eq!(got.get("a3").map(String::as_str), Some("10.0.2.2:2811"));
        assert_eq!(got.get("id").map(String::as_str), Some("abd-1"));
        assert_eq!(got.len(), 2);

        std::fs::write(dev.join("vdb"), [b'a', b'=', 0xff, 0xfe]).unwrap();
        let err = format!("{:#}", keys(&sys, &dev).unwrap_err());
        assert!(err.contains("not UTF-8"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
