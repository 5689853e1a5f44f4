//! Helpers for the cross-crate end-to-end tests in `tests/tests/`: finding the workspace's
//! binaries, running them as child processes that die with the test, and waiting on
//! conditions with deadlines instead of sleeping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The path of a workspace binary (`a3-server`, `abd-agent`, `xapi-sim`), built beside the
/// test executable. `cargo xtask test` builds every binary before running the tests.
pub fn bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo xtask test` (or `cargo build --workspace --bins` first)",
        path.display()
    );
    path
}

/// The ABD image that `cargo xtask image` writes into the target directory the tests were
/// built in (`cargo xtask test` builds it before the tests).
pub fn built_image() -> PathBuf {
    let target = profile_dir().parent().expect("target dir").to_path_buf();
    let img = target.join("abd-image/abd.img");
    assert!(
        img.exists(),
        "{} is missing: run `cargo xtask image` (`cargo xtask test` builds it before the tests)",
        img.display()
    );
    img
}

/// `target/<profile>`: test executables live in its `deps/`, binaries in it.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> dir")
        .to_path_buf()
}

/// A child process killed (SIGKILL) and reaped when dropped, so no test leaves servers
/// behind, even when it panics.
pub struct ChildGuard {
    /// The process.
    pub child: Child,
}

impl ChildGuard {
    /// Spawns `cmd`, naming it in the panic if it cannot start.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ChildGuard { child }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a clean stop) and waits for the exit, at most `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY-free: `kill(1)` is the portable way without pulling in libc here.
        let _ = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status();
        wait_until(timeout, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or `None` after `timeout`.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The chunk files in an A3's store (quarantined ones excluded).
pub fn chunk_files(state: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_none() {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&state.join("store").join("chunks"), &mut out);
    out
}
