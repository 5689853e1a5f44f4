//! The recipe for the ABD template: what goes into the appliance and how it is described
//! to XAPI. `cargo xtask image` does the I/O (building the agent, reading the Debian kernel,
//! assembling the disk); everything it decides comes from here, so it is unit-tested.
//!
//! Who does what:
//! - [`recipe`]: the kernel modules, the bootloader config, the image's size and version.
//! - [`modules`]: resolving the modules' dependencies from the kernel's `modules.dep`.
//! - [`initramfs`]: the initramfs (a newc cpio) whose `/init` is `abd-agent`.
//! - [`template`]: the template VM's `ova.xml` for the XVA.
#![warn(missing_docs)]

pub mod initramfs;
pub mod modules;
pub mod recipe;
pub mod template;
