//! Running one script: `<shell> -c <file>` (or the file itself when it has a `#!` line) in its
//! own process group, every output line streamed as it comes, a budget after which the whole
//! group is killed, and no waiting on pipes that a backgrounded child keeps open.
//!
//! The anchors had neither a timeout nor the pipe rule: a startup script doing `daemon &` hung
//! Google's runner until the daemon closed stdout.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::event::{Event, Sink, Stream, Termination, emit};

/// A line longer than this is logged in pieces, so a script printing without newlines cannot
/// make the runner hold unbounded memory.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    /// `[MetadataScripts] default_shell`.
    pub shell: String,
    /// Kill the script's process group after this long; `None` = no limit.
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL of the group.
    pub kill_grace: Duration,
    /// How long to keep reading the pipes after the script's main process exited.
    pub pipe_grace: Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            shell: "/bin/bash".to_string(),
            timeout: None,
            kill_grace: Duration::from_secs(5),
            pipe_grace: Duration::from_secs(1),
        }
    }
}

/// What happened to one script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub termination: Termination,
    /// The process group the script ran in (= its pid).
    pub pgid: i32,
    pub timed_out: bool,
    /// Output pipes were still open when we stopped reading.
    pub orphans: bool,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for the script: {0}")]
    Wait(std::io::Error),
}

/// The argv for `file`: the file itself if it starts with `#!`, else `<shell> -c <file>`.
pub fn command_line(shell: &str, file: &Path, content: &[u8]) -> Vec<String> {
    let file = file.to_string_lossy().into_owned();
    if content.starts_with(b"#!") {
        vec![file]
    } else {
        vec![shell.to_string(), "-c".to_string(), file]
    }
}

/// Run the script stored in `file` (whose text is `content`) with `cwd` as working directory.
pub async fn run_script(
    key: &str,
    file: &Path,
    content: &[u8],
    cwd: &Path,
    opts: &ExecOptions,
    sink: Option<&Sink>,
) -> Result<ExecResult, ExecError> {
    let argv = command_line(&opts.shell, file, content);
    let started = Instant::now();
    let mut child = spawn(&argv, cwd).await?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    tracing::debug!(SCRIPT = %key, "started {argv:?} as process group {pgid}");

    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let mut out_lines = LineSplitter::default();
    let mut err_lines = LineSplitter::default();
    let mut out_buf = vec![0u8; 8192];
    let mut err_buf = vec![0u8; 8192];
    let line = |stream, line: String| {
        emit(
            sink,
            Event::Output {
                key: key.to_string(),
                stream,
                line,
            },
        )
    };

    let mut status: Option<ExitStatus> = None;
    let budget_end = opts.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut term_deadline: Option<tokio::time::Instant> = None;
    let mut pipes_until: Option<tokio::time::Instant> = None;
    let mut timed_out = false;
    let mut orphans = false;

    while status.is_none() || out.is_some() || err.is_some() {
        tokio::select! {
            r = read_some(&mut out, &mut out_buf) => match r {
                Some(n) if n > 0 => out_lines.push(&out_buf[..n], |l| line(Stream::Stdout, l)),
                _ => {
                    out_lines.finish(|l| line(Stream::Stdout, l));
                    out = None;
                }
            },
            r = read_some(&mut err, &mut err_buf) => match r {
                Some(n) if n > 0 => err_lines.push(&err_buf[..n], |l| line(Stream::Stderr, l)),
                _ => {
                    err_lines.finish(|l| line(Stream::Stderr, l));
                    err = None;
                }
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_err(ExecError::Wait)?);
                pipes_until = Some(tokio::time::Instant::now() + opts.pipe_grace);
            }
            _ = sleep_until(budget_end), if !timed_out && status.is_none() => {
                timed_out = true;
                emit(sink, Event::TimedOut { key: key.to_string(), after: opts.timeout.unwrap_or_default() });
                signal_group(key, pgid, Signal::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + opts.kill_grace);
                term_deadline = kill_at;
            }
            _ = sleep_until(kill_at), if status.is_none() => {
                signal_group(key, pgid, Signal::SIGKILL);
                kill_at = None;
            }
            _ = sleep_until(pipes_until) => {
                orphans = true;
                // Flush what we have; the rest belongs to the background process.
                out_lines.finish(|l| line(Stream::Stdout, l));
                err_lines.finish(|l| line(Stream::Stderr, l));
                break;
            }
        }
    }
    if timed_out {
        // The main process is gone; make sure nothing of its group survives. Killed members
        // linger as zombies until their new parent reaps them, so wait for that too.
        let deadline = term_deadline.unwrap_or_else(tokio::time::Instant::now);
        while group_alive(pgid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if group_alive(pgid) {
            signal_group(key, pgid, Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while group_alive(pgid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if group_alive(pgid) {
                tracing::warn!(SCRIPT = %key, "process group {pgid} still exists after SIGKILL");
            }
        }
    }
    let termination = termination(status.expect("loop ends only after the child was reaped"));
    let elapsed = started.elapsed();
    if orphans && !timed_out {
        emit(
            sink,
            Event::Orphans {
                key: key.to_string(),
            },
        );
    }
    emit(
        sink,
        Event::Finished {
            key: key.to_string(),
            termination,
            elapsed,
        },
    );
    Ok(ExecResult {
        termination,
        pgid,
        timed_out,
        orphans,
        elapsed,
    })
}

async fn spawn(argv: &[String], cwd: &Path) -> Result<Child, ExecError> {
    let mut attempts = 0;
    loop {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(cwd)
            // The script must not speak for us to systemd.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout kills everything it started.
            .process_group(0);
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            // The file was just written: another thread of this process may be between fork and
            // exec with the write fd still open (ETXTBSY). It clears within moments.
            Err(e) if e.raw_os_error() == Some(Errno::ETXTBSY as i32) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(source) => {
                return Err(ExecError::Spawn {
                    program: argv[0].clone(),
                    source,
                });
            }
        }
    }
}

async fn read_some<R: AsyncReadExt + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match r {
        Some(r) => r.read(buf).await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn signal_group(key: &str, pgid: i32, sig: Signal) {
    if pgid <= 0 {
        return;
    }
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::error!(SCRIPT = %key, "cannot send {sig} to process group {pgid}: {e}"),
    }
}

/// True while any live (non-zombie) process of group `pgid` exists. Killed members stay zombies
/// until their new parent reaps them, which a slow init may take its time over; they hold
/// nothing, so they do not count. Without /proc, any member counts.
pub fn group_alive(pgid: i32) -> bool {
    if pgid <= 0 || killpg(Pid::from_raw(pgid), None::<Signal>).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp …`; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
    })
}

fn termination(status: ExitStatus) -> Termination {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited(code),
        (None, Some(sig)) => Termination::Signaled(sig),
        (None, None) => Termination::Exited(-1),
    }
}

/// Splits a byte stream into lines (without `\n`, a trailing `\r` dropped), lossily decoded,
/// cutting lines longer than [`MAX_LINE`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, mut data: &[u8], mut each: impl FnMut(String)) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.buf.extend_from_slice(&data[..i]);
                    each(take_line(&mut self.buf));
                    data = &data[i + 1..];
                }
                None => {
                    self.buf.extend_from_slice(data);
                    data = &[];
                }
            }
            while self.buf.len() >= MAX_LINE {
                let rest = self.buf.split_off(MAX_LINE);
                each(take_line(&mut self.buf));
                self.buf = rest;
            }
        }
    }

    /// The unterminated last line, if any.
    pub fn finish(&mut self, mut each: impl FnMut(String)) {
        if !self.buf.is_empty() {
            each(take_line(&mut self.buf));
        }
    }
}

fn take_line(buf: &mut Vec<u8>) -> String {
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    let s = String::from_utf8_lossy(buf).into_owned();
    buf.clear();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |l| out.push(l));
        }
        s.finish(|l| out.push(l));
        out
    }

    #[test]
    fn lines_are_split_across_chunks_crlf_dropped_and_long_lines_cut() {
        assert_eq!(
            split(&[b"a\nb", b"c\r\n", b"\n", b"tail"]),
            ["a", "bc", "", "tail"]
        );
        assert_eq!(split(&[b"\xff\n"]), ["\u{fffd}"]);
        let long = vec![b'x'; MAX_LINE * 2 + 3];
        let got = split(&[&long]);
        assert_eq!(
            got.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 3]
        );
    }

    #[test]
    fn shebang_runs_the_file_itself_otherwise_the_shell() {
        let f = Path::new("/run/x/startup-script");
        assert_eq!(
            command_line("/bin/bash", f, b"#!/bin/sh\necho"),
            ["/run/x/startup-script"]
        );
        assert_eq!(
            command_line("/bin/bash", f, b"echo hi"),
            ["/bin/bash", "-c", "/run/x/startup-script"]
        );
    }
}
