//! End-to-end test support. A test calls [`sandbox`] first: outside, it re-runs the same test in
//! a child process under `unshare --mount --net --pid --uts --ipc` and reports the child's verdict; inside, it
//! builds a private world — a copy of `/etc` (passwd, shadow, group, gshadow, sudoers.d …), empty
//! `/home`, `/run`, `/var/lib/google`, loopback up — and lets the test body run there. Real
//! useradd, sshd and routes then act on the copies, never on the host.

pub mod oslogin;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod tools;

const INNER: &str = "GCE_TESTKIT_INNER";

/// Whether this process may build sandboxes (root; whether the programs are there is
/// [`tools::require_base`]'s business, which fails loudly rather than skipping).
pub fn can_sandbox() -> bool {
    nix_is_root()
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Returns `true` in the sandboxed child (the test body should run), `false` in the parent once
/// the child passed (the test is done). Panics in the parent when the child failed. When the
/// machine cannot sandbox (not root), prints why and returns `false`: the caller skips.
pub fn sandbox(test_name: &str) -> bool {
    if std::env::var_os(INNER).is_some() {
        setup_inside().unwrap_or_else(|e| panic!("sandbox setup failed: {e}"));
        return true;
    }
    if !can_sandbox() {
        eprintln!("SKIPPED {test_name}: needs root to build a private namespace");
        return false;
    }
    // A machine without the base packages hears it in one line naming them, not as a test
    // failing somewhere inside on "No such file or directory".
    if let Err(missing) = tools::require_base() {
        panic!("{missing}");
    }
    let out = rerun_inside()
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}", spawn_error("unshare", &e)));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- sandboxed run of {test_name} ---\n{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "sandboxed test {test_name} failed: {}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "sandboxed run did not execute {test_name}"
    );
    false
}

/// This program again, in new mount, network and pid namespaces, marked as the inner run;
/// the caller adds the arguments.
fn rerun_inside() -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--net",
        "--pid",
        // A private hostname and IPC too: instance setup sets the hostname, which must never
        // reach the host's.
        "--uts",
        "--ipc",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--",
    ])
    .arg(exe)
    .env(INNER, "1");
    cmd
}

/// Runs `args` (program and arguments, no shell); an error carries its stderr, or names the
/// package to install when the program is missing.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| spawn_error(args[0], &e))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A program that could not be started: the one line naming its package when it is missing.
pub fn spawn_error(program: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        tools::missing_message(&[program])
    } else {
        format!("cannot run {program}: {e}")
    }
}

fn setup_inside() -> Result<(), String> {
    sh(&["mount", "--make-rprivate", "/"])?;
    // Stage the private /etc in a tmpfs, then bind it over /etc: useradd renames files inside
    // /etc, which fails on bind-mounted single files, so the whole directory is replaced.
    let stage = "/tmp/.gce-testkit-stage";
    std::fs::create_dir_all(stage).map_err(|e| e.to_string())?;
    sh(&["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", stage])?;
    sh(&["cp", "-a", "/etc", &format!("{stage}/etc")])?;
    sh(&["mount", "--bind", &format!("{stage}/etc"), "/etc"])?;
    // The build's binaries must stay reachable even when the checkout lives under one of the
    // directories replaced below (CI may clone into /home or /run): keep a handle on the target
    // directory and bind it back into place afterwards.
    let keep = target_dir();
    let stash = format!("{stage}/keep");
    std::fs::create_dir_all(&stash).map_err(|e| e.to_string())?;
    sh(&["mount", "--bind", &keep.to_string_lossy(), &stash])?;
    for dir in ["/home", "/run", "/var/lib/google"] {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        sh(&["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", dir])?;
        if keep.starts_with(dir) {
            std::fs::create_dir_all(&keep).map_err(|e| e.to_string())?;
            sh(&["mount", "--bind", &stash, &keep.to_string_lossy()])?;
        }
    }
    std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
    std::fs::create_dir_all(SANDBOX_TMP).map_err(|e| e.to_string())?;
    sh(&["ip", "link", "set", "lo", "up"])?;
    Ok(())
}

/// Scratch space inside the sandbox (the private /run); /tmp itself is left alone because a
/// checkout may live there.
const SANDBOX_TMP: &str = "/run/gce-testkit";

/// The cargo target directory of the running program (`…/target`), or its own directory.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "target"))
        .unwrap_or_else(|| exe.parent().expect("exe dir"))
        .to_path_buf()
}

/// A private temporary directory (inside the sandbox's /tmp).
pub fn temp_dir(name: &str) -> PathBuf {
    let base = if std::env::var_os(INNER).is_some() {
        PathBuf::from(SANDBOX_TMP)
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free TCP port on `ip` (`"::1"` in a namespace without IPv4).
pub fn free_port_on(ip: &str) -> u16 {
    let ip: std::net::IpAddr = ip.parse().expect("an IP address");
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A real OpenSSH server on loopback, killed on drop.
pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    /// The address it listens on (`127.0.0.1` or `::1`).
    pub ip: String,
    child: Child,
}

impl Sshd {
    /// Starts sshd on 127.0.0.1 with public-key authentication only. `extra` lines are appended
    /// to its config (e.g. an `AuthorizedKeysCommand`). Panics with [`Sshd::try_start_on`]'s
    /// message.
    pub fn start(extra: &str) -> Sshd {
        Sshd::start_on("127.0.0.1", extra)
    }

    /// As [`Sshd::start`], listening on `ip` (`"::1"` in a namespace without IPv4).
    pub fn start_on(ip: &str, extra: &str) -> Sshd {
        Sshd::try_start_on(ip, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Sshd::start`], with a one-line error (naming the package when sshd or ssh-keygen is
    /// missing) instead of a panic: for the demo.
    pub fn try_start(extra: &str) -> Result<Sshd, String> {
        Sshd::try_start_on("127.0.0.1", extra)
    }

    /// [`Sshd::try_start`] on `ip`.
    pub fn try_start_on(ip: &str, extra: &str) -> Result<Sshd, String> {
        let sshd = tools::require("sshd")?;
        tools::require("ssh-keygen")?;
        // One directory per server: a test may run several (e.g. an impostor with another key).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = temp_dir(&if n == 0 {
            "sshd".to_string()
        } else {
            format!("sshd{n}")
        });
        let port = free_port_on(ip);
        let addr: std::net::IpAddr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address"))?;
        let listen = std::net::SocketAddr::new(addr, port);
        let hostkey = dir.join("hostkey");
        sh(&[
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            hostkey.to_str().unwrap(),
        ])
        .map_err(|e| format!("sshd host key: {e}"))?;
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress {listen}\nHostKey {}\nPidFile none\nUsePAM no\nStrictModes yes\n\
                 PermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nAuthorizedKeysFile .ssh/authorized_keys\nLogLevel VERBOSE\n\
                 MaxStartups 100\nMaxAuthTries 20\n{extra}\n",
                hostkey.display()
            ),
        )
        .map_err(|e| format!("sshd config: {e}"))?;
        let log =
            std::fs::File::create(dir.join("sshd.log")).map_err(|e| format!("sshd log: {e}"))?;
        // sshd re-executes itself and insists on an absolute path.
        let child = Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| spawn_error("sshd", &e))?;
        // From here on, dropping `started` kills sshd again.
        let mut started = Sshd {
            port,
            dir,
            ip: ip.to_string(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(listen).is_err() {
            if Instant::now() >= deadline || matches!(started.child.try_wait(), Ok(Some(_))) {
                return Err(format!("sshd did not start: {}", started.log().trim()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(started)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Tries `ssh user@IP cmd` with the private key `key`; returns the output.
    pub fn login(&self, user: &str, key: &Path, cmd: &str) -> Output {
        Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=5",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg(format!("{user}@{}", self.ip))
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}", spawn_error("ssh", &e)))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh ed25519 key pair in `dir`: (private key path, public key line).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    sh(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        name,
        "-f",
        key.to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("read pub");
    (key, public.trim().to_string())
}

/// Polls `f` every 2 ms until it returns true or `timeout` passes; returns the time it took.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A daemon pointed at a metadata server: `program --config CONFIG --lock-file LOCK` with
/// `GCE_METADATA_HOST`, stdin closed. The caller adds flags and output, then spawns it.
pub fn daemon_command(program: &Path, config: &Path, lock: &Path, metadata_host: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("--config")
        .arg(config)
        .arg("--lock-file")
        .arg(lock)
        .env("GCE_METADATA_HOST", metadata_host)
        .stdin(Stdio::null());
    cmd
}

/// A workspace binary built next to the running test (`target/<profile>/<name>`); other packages'
/// binaries are not in `CARGO_BIN_EXE_*`, so `scripts/test` builds them all first.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Tests and benches run from target/<profile>/deps/, programs from target/<profile>/.
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// For benchmark and demo programs (not libtest): outside, re-runs this program with the same
/// arguments in a private namespace and exits with its status; inside, builds the private world
/// and returns so `main` continues there.
pub fn sandbox_main() {
    if std::env::var_os(INNER).is_some() {
        if let Err(e) = setup_inside() {
            eprintln!("sandbox setup failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if !can_sandbox() {
        eprintln!("needs root (it builds a private mount+net namespace)");
        std::process::exit(2);
    }
    if let Err(missing) = tools::require_base() {
        eprintln!("{missing}");
        std::process::exit(1);
    }
    let status = match rerun_inside().args(std::env::args_os().skip(1)).status() {
        Ok(status) => status,
        Err(e) => {
            eprintln!("{}", spawn_error("unshare", &e));
            std::process::exit(1);
        }
    };
    std::process::exit(status.code().unwrap_or(1));
}

/// Median and 90th percentile of a sample, in milliseconds.
pub fn median_p90(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = samples.len();
    (ms(samples[n / 2]), ms(samples[(n * 9 / 10).min(n - 1)]))
}

/// A single-threaded tokio runtime driven by its own thread, for tests and benchmarks that run a
/// server (the emulator) while the test thread blocks. Unlike a multi-thread runtime it needs no
/// `rt-multi-thread` feature, so building the benchmarks does not unify that feature (and the
/// `libm` it drags in through `powf`) into the daemons under test.
pub struct BackgroundRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundRuntime {
    pub fn new() -> BackgroundRuntime {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-runtime".into())
            .spawn(move || {
                // While this thread sits in block_on, the runtime's IO and timers are driven, so
                // spawned tasks run and Handle::block_on from other threads works.
                let _ = rt.block_on(stopped);
            })
            .expect("runtime thread");
        BackgroundRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `fut` to completion from the calling (non-runtime) thread.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.handle.block_on(fut)
    }
}

impl Default for BackgroundRuntime {
    fn default() -> Self {
        BackgroundRuntime::new()
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
