//! The one way to run a program: argv only (never a shell), a timeout that kills the whole
//! process group, bounded capture of stdout/stderr, and a typed error naming the program.
//!
//! The anchors had no timeouts, and a background child holding stdout open hung their script
//! runner; here the reader gives up shortly after the program itself exits.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Captured output is cut at this many bytes per stream; the rest is drained and dropped so the
/// child never blocks on a full pipe.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// Stderr text carried in [`CmdError::Failed`] is cut at this many bytes.
const ERROR_STDERR_LIMIT: usize = 2048;

/// After the program exits, how long to keep reading pipes that a background grandchild may hold
/// open.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Variables no child gets: a child must not speak for us to systemd (`NOTIFY_SOCKET`) or
/// inherit our watchdog.
const ALWAYS_REMOVED_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOpts {
    /// Kill the process group after this long.
    pub timeout: Duration,
    /// Bytes fed to stdin (then closed); `None` connects stdin to /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Extra environment variables to remove (`NOTIFY_SOCKET` and `WATCHDOG_*` always are).
    pub env_remove: Vec<String>,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            timeout: Duration::from_secs(30),
            stdin: None,
            env_remove: Vec::new(),
        }
    }
}

impl RunOpts {
    pub fn with_timeout(timeout: Duration) -> Self {
        RunOpts {
            timeout,
            ..RunOpts::default()
        }
    }
}

/// A finished program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    /// At most [`CAPTURE_LIMIT`] bytes.
    pub stdout: Vec<u8>,
    /// At most [`CAPTURE_LIMIT`] bytes.
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Errors from [`run`] and [`run_status`].
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("empty command line")]
    EmptyArgv,
    #[error(
        "cannot run {program}: {source}{}",
        missing_package_hint(program, source)
    )]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// Non-zero exit or killed by a signal; `status` displays as `exit status: N` or
    /// `signal: N (SIGx)`.
    #[error("{program} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{program} timed out after {after:?} and was killed")]
    Timeout { program: String, after: Duration },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// The packages that ship the programs the daemons run (Debian, Fedora/EL), so a missing one is
/// one log line that says what to install.
const PACKAGES: &[(&str, &str, &str)] = &[
    ("useradd", "passwd", "shadow-utils"),
    ("usermod", "passwd", "shadow-utils"),
    ("userdel", "passwd", "shadow-utils"),
    ("groupadd", "passwd", "shadow-utils"),
    ("gpasswd", "passwd", "shadow-utils"),
    ("curl", "curl", "curl"),
    ("chronyc", "chrony", "chrony"),
    ("hwclock", "util-linux-extra", "util-linux"),
];

/// ` (not installed: package P on Debian/Ubuntu, Q on Fedora/EL)` when `program` is missing and
/// known, else nothing.
fn missing_package_hint(program: &str, source: &std::io::Error) -> String {
    if source.kind() != std::io::ErrorKind::NotFound {
        return String::new();
    }
    let name = program.rsplit('/').next().unwrap_or(program);
    match PACKAGES.iter().find(|(p, _, _)| *p == name) {
        Some((_, deb, rpm)) if deb == rpm => format!(" (not installed: package {deb})"),
        Some((_, deb, rpm)) => {
            format!(" (not installed: package {deb} on Debian/Ubuntu, {rpm} on Fedora/EL)")
        }
        None => " (not installed)".to_string(),
    }
}

/// Run `argv` and require exit status 0.
pub async fn run(argv: &[String], opts: &RunOpts) -> Result<Output, CmdError> {
    let out = run_status(argv, opts).await?;
    if out.status.success() {
        return Ok(out);
    }
    Err(CmdError::Failed {
        program: argv[0].clone(),
        status: out.status,
        stderr: summarize(&out.stderr),
    })
}

/// Run `argv` and return its output whatever the exit status; errors only for spawn failures and
/// timeouts.
pub async fn run_status(argv: &[String], opts: &RunOpts) -> Result<Output, CmdError> {
    let Some(program) = argv.first() else {
        return Err(CmdError::EmptyArgv);
    };
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .stdin(if opts.stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Own process group, so a timeout can kill everything the program started.
        .process_group(0);
    for var in ALWAYS_REMOVED_ENV
        .iter()
        .copied()
        .chain(opts.env_remove.iter().map(String::as_str))
    {
        cmd.env_remove(var);
    }
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();

    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut out_buf = Vec::new();
    let mut err_buf = Vec::new();

    let status = {
        let feed = async {
            if let (Some(mut pipe), Some(data)) = (stdin, opts.stdin.as_deref()) {
                // EPIPE just means the program did not read all of it; not our error.
                if let Err(e) = pipe.write_all(data).await {
                    tracing::debug!(program = %program, "writing stdin: {e}");
                }
            }
        };
        let readers = async {
            tokio::join!(
                read_capped(stdout, &mut out_buf),
                read_capped(stderr, &mut err_buf),
                feed
            )
        };
        tokio::pin!(readers);
        let wait = child.wait();
        tokio::pin!(wait);
        let deadline = tokio::time::sleep(opts.timeout);
        tokio::pin!(deadline);
        let mut readers_done = false;
        let waited = loop {
            tokio::select! {
                res = &mut wait => break Some(res),
                _ = &mut readers, if !readers_done => readers_done = true,
                _ = &mut deadline => break None,
            }
        };
        match waited {
            Some(res) => {
                if !readers_done {
                    // The program exited; anything still holding the pipes is a leftover child.
                    let _ = tokio::time::timeout(DRAIN_GRACE, &mut readers).await;
                }
                Some(res)
            }
            None => None,
        }
    };

    let status = match status {
        Some(Ok(status)) => status,
        Some(Err(source)) => {
            return Err(CmdError::Wait {
                program: program.clone(),
                source,
            });
        }
        None => {
            kill_group(pid, program);
            // Reap the direct child too (kill_on_drop would only signal it).
            if let Err(e) = child.kill().await {
                tracing::debug!(program = %program, "killing timed-out child: {e}");
            }
            return Err(CmdError::Timeout {
                program: program.clone(),
                after: opts.timeout,
            });
        }
    };

    tracing::debug!(program = %program, "{program} exited ({status}) after {:?}", started.elapsed());
    for line in String::from_utf8_lossy(&err_buf).lines() {
        if !line.trim().is_empty() {
            tracing::debug!(program = %program, "stderr: {line}");
        }
    }
    Ok(Output {
        status,
        stdout: out_buf,
        stderr: err_buf,
    })
}

fn kill_group(pid: Option<u32>, program: &str) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // process_group(0) made the child's pid its process group id.
    match nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(program = %program, "killing process group {pid}: {e}"),
    }
}

/// Read everything, keeping the first [`CAPTURE_LIMIT`] bytes.
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, buf: &mut Vec<u8>) {
    let Some(mut reader) = reader else { return };
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) => return,
            Ok(n) => {
                let room = CAPTURE_LIMIT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("reading child output: {e}");
                return;
            }
        }
    }
}

/// Trimmed, length-limited stderr for error messages.
fn summarize(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.len() <= ERROR_STDERR_LIMIT {
        return text.to_string();
    }
    let mut end = ERROR_STDERR_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn true_succeeds_false_fails_with_status() {
        let out = run(&argv(&["/bin/true"]), &RunOpts::default())
            .await
            .expect("true");
        assert!(out.status.success());
        match run(&argv(&["/bin/false"]), &RunOpts::default()).await {
            Err(CmdError::Failed {
                program,
                status,
                stderr,
            }) => {
                assert_eq!(program, "/bin/false");
                assert_eq!(status.code(), Some(1));
                assert!(stderr.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn failure_carries_trimmed_stderr_and_code() {
        let err = run(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            &RunOpts::default(),
        )
        .await
        .expect_err("exit 3");
        match &err {
            CmdError::Failed {
                program,
                status,
                stderr,
            } => {
                assert_eq!(program, "sh");
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "err");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.to_string(), "sh failed (exit status: 3): err");
        // run_status returns the output instead.
        let out = run_status(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            &RunOpts::default(),
        )
        .await
        .expect("output");
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group_quickly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 10 & echo $! > {}; wait", pidfile.display());
        let started = Instant::now();
        let err = run(
            &argv(&["sh", "-c", &script]),
            // Long enough for sh to write the pid file even on a loaded machine.
            &RunOpts::with_timeout(Duration::from_millis(500)),
        )
        .await
        .expect_err("timeout");
        assert!(
            matches!(err, CmdError::Timeout { ref program, .. } if program == "sh"),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        // The background grandchild was killed too (it may linger briefly as a zombie until its
        // new parent reaps it).
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        };
        let t = Instant::now();
        while !gone() && t.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone(), "grandchild {pid} survived");
    }

    #[tokio::test]
    async fn plain_sleep_times_out() {
        let started = Instant::now();
        let err = run(
            &argv(&["sleep", "10"]),
            &RunOpts::with_timeout(Duration::from_millis(200)),
        )
        .await
        .expect_err("timeout");
        assert!(
            matches!(err, CmdError::Timeout { after, .. } if after == Duration::from_millis(200))
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// A missing program the daemons run is one line naming the package that ships it.
    #[test]
    fn missing_program_names_its_package() {
        let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
        for (program, hint) in [
            (
                "useradd",
                " (not installed: package passwd on Debian/Ubuntu, shadow-utils on Fedora/EL)",
            ),
            ("/usr/bin/curl", " (not installed: package curl)"),
            ("chronyc", " (not installed: package chrony)"),
            ("my-own-tool", " (not installed)"),
        ] {
            assert_eq!(missing_package_hint(program, &missing()), hint, "{program}");
        }
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(missing_package_hint("useradd", &denied), "");
    }

    #[tokio::test]
    async fn missing_program_and_empty_argv() {
        match run(&argv(&["/nonexistent/prog"]), &RunOpts::default()).await {
            Err(e @ CmdError::Spawn { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "cannot run /nonexistent/prog: No such file or directory (os error 2) \
                     (not installed)"
                );
                let CmdError::Spawn { program, source } = e else {
                    unreachable!()
                };
                assert_eq!(program, "/nonexistent/prog");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            run(&[], &RunOpts::default()).await,
            Err(CmdError::EmptyArgv)
        ));
    }

    #[tokio::test]
    async fn stdin_is_fed_env_is_scrubbed_and_output_capped() {
        let opts = RunOpts {
            stdin: Some(b"hello".to_vec()),
            ..RunOpts::default()
        };
        let out = run(&argv(&["cat"]), &opts).await.expect("cat");
        assert_eq!(out.stdout, b"hello");
        let out = run(
            &argv(&[
                "sh",
                "-c",
                "echo ${NOTIFY_SOCKET-unset}; head -c 100000 /dev/zero",
            ]),
            &RunOpts::default(),
        )
        .await
        .expect("sh");
        assert!(out.stdout.starts_with(b"unset\n"));
        assert_eq!(out.stdout.len(), CAPTURE_LIMIT);
        // Killed by a signal is a failure too.
        let err = run(&argv(&["sh", "-c", "kill -9 $$"]), &RunOpts::default())
            .await
            .expect_err("killed");
        assert!(
            matches!(&err, CmdError::Failed { status, .. } if status.signal() == Some(9)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn background_child_holding_stdout_does_not_hang() {
        let started = Instant::now();
        let out = run(
            &argv(&["sh", "-c", "echo hi; sleep 5 & echo done"]),
            &RunOpts::with_timeout(Duration::from_secs(4)),
        )
        .await;
        // `sleep` keeps stdout open; we stop reading shortly after `sh` exits.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let out = out.expect("exit 0");
        assert_eq!(out.stdout, b"hi\ndone\n");
    }
}
