//! What the ABD appliance is made of (DESIGN §5).

/// The template's version; the A3 re-imports the template when it carries a newer one.
pub const TEMPLATE_VERSION: &str = concat!("abd-", env!("CARGO_PKG_VERSION"));

/// The whole disk image, at most 32 MiB (DESIGN §5).
pub const IMAGE_SIZE: u64 = 32 * 1024 * 1024;

/// The FAT partition starts at 1 MiB, after the MBR and its gap.
pub const PARTITION_OFFSET: u64 = 1024 * 1024;

/// The memory the appliance runs in.
pub const MEMORY_BYTES: u64 = 128 * 1024 * 1024;

/// The agent's path in the initramfs: the kernel runs it as PID 1.
pub const INIT_PATH: &str = "init";

/// Where the initramfs keeps the modules, flat, and the file listing their load order.
pub const MODULES_DIR: &str = "lib/modules";
/// The load-order list the agent reads at boot: one file name per line.
pub const MODULES_LOAD_LIST: &str = "etc/abd/modules.load";

/// The modules the agent loads at boot. In Debian's cloud kernel the Xen and virtio
/// front-ends are modules, not built in: block and network devices under Xen (blkfront,
/// netfront), `/dev/xen/xenbus` for xenstore (xenfs, evtchn), and the same under qemu
/// (virtio). Their dependencies are added from `modules.dep`.
pub const MODULES: &[&str] = &[
    "xen-blkfront",
    "xen-netfront",
    "xenfs",
    "xen-evtchn",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
];

/// The kernel command line: serial console under qemu and Xen HVM, and a quick reboot
/// should PID 1 ever fail, rather than a hung VM.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 console=hvc0 panic=5 quiet";

/// The syslinux config on the FAT partition.
pub fn syslinux_cfg() -> String {
    format!(
        "DEFAULT abd\nPROMPT 0\nTIMEOUT 0\nLABEL abd\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND {KERNEL_CMDLINE}\n"
    )
}
