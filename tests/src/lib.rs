//! Helpers for the cross-crate end-to-end tests in `tests/tests/`: finding the workspace's
//! binaries, running them as child processes that die with the test (an A3 among them),
//! and waiting on conditions with deadlines instead of sleeping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// Starts `a3-server serve` on `state` (created if missing), with its HTTP API on
/// 127.0.0.1:0, port 2811 on `data_listen` (e.g. `127.0.1.201:0`) and the config file
/// `config` if any, logging to [`a3_log`]; waits until port 2811 is bound and the CLI
/// reaches the API.
pub fn start_a3(state: &Path, data_listen: &str, config: Option<&Path>) -> ChildGuard {
    start_a3_from(&bin("a3-server"), state, data_listen, config, &[])
}

/// [`start_a3`] with the build of `a3-server` that has crash points
/// (`a3-server-failpoints`, which `cargo xtask test` builds), set to abort the process at
/// the crash point `point` (`NAME[:N]`, see `a3_server::util::crashpoint`).
pub fn start_a3_crashing(
    state: &Path,
    data_listen: &str,
    config: Option<&Path>,
    point: &str,
) -> ChildGuard {
    let server = bin("a3-server-failpoints");
    start_a3_from(
        &server,
        state,
        data_listen,
        config,
        &[("A3_CRASH_AT", point)],
    )
}

fn start_a3_from(
    server: &Path,
    state: &Path,
    data_listen: &str,
    config: Option<&Path>,
    env: &[(&str, &str)],
) -> ChildGuard {
    std::fs::create_dir_all(state).unwrap();
    // Left by an earlier run on this state dir; the new server writes its own.
    let _ = std::fs::remove_file(state.join("api.url"));
    let _ = std::fs::remove_file(state.join("data.addr"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(a3_log(state))
        .unwrap();
    let mut cmd = Command::new(server);
    cmd.envs(env.iter().copied());
    cmd.args(["serve", "--state-dir"]).arg(state).args([
        "--http-listen",
        "127.0.0.1:0",
        "--data-listen",
        data_listen,
    ]);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let child = ChildGuard::spawn(
        cmd.env_remove("A3_CONFIG")
            .env_remove("A3_API")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log),
    );
    // The server writes `data.addr` after `api.url`, once port 2811 is bound.
    wait_until(Duration::from_secs(30), || {
        (state.join("data.addr").exists() && a3_cli(state, &["abd", "list"]).status.success())
            .then_some(())
    })
    .unwrap_or_else(|| panic!("A3 did not start; see {}", a3_log(state).display()));
    child
}

/// The log of the A3 [`start_a3`] started on `state`.
pub fn a3_log(state: &Path) -> PathBuf {
    state.with_extension("a3.log")
}

/// Runs `a3-server --state-dir STATE ARGS` (no config or API from the environment).
pub fn a3_cli(state: &Path, args: &[&str]) -> Output {
    Command::new(bin("a3-server"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("A3_CONFIG")
        .env_remove("A3_API")
        .output()
        .unwrap()
}

/// Runs the A3 CLI, asserting success; its stdout.
pub fn a3_ok(state: &Path, args: &[&str]) -> String {
    let out = a3_cli(state, args);
    assert!(
        out.status.success(),
        "a3-server {args:?} failed: {}\n{}\n(A3 log: {})",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        a3_log(state).display()
    );
    String::from_utf8(out.stdout).unwrap()
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

/// Runs a tool the test set-up installs (`xtask/src/setup.rs` TEST_TOOLS); a missing tool
/// fails the test with the fix.
pub fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} (cargo xtask test installs it: xtask/src/setup.rs TEST_TOOLS): {e}")
    })
}

/// [`tool`], which must succeed; its standard output.
pub fn tool_ok(program: &str, args: &[&str]) -> String {
    let out = tool(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file and directory under `dir` (itself included, symlinks not followed) that its
/// group or others may use at all, with its mode.
pub fn not_owner_only(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // gone meanwhile (a temp file)
        };
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.file_type().is_symlink() && mode & 0o077 != 0 {
            found.push((path.clone(), mode));
        }
        if meta.is_dir() {
            todo.extend(
                std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| Some(e.ok()?.path())),
            );
        }
    }
    found
}
