//! The one way `gce-ssh` runs a helper program (`ssh-keygen`, `gcloud`): argv only, stdin
//! closed, output captured, a deadline, and a one-line error that names the package when the
//! program is missing.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program} not found: install {package}")]
    Missing {
        program: String,
        package: &'static str,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
}

/// The package that ships `program` (for the "not found" message).
fn package_of(program: &str) -> &'static str {
    match program.rsplit('/').next().unwrap_or(program) {
        "ssh" | "ssh-keygen" => "openssh-client",
        "gcloud" => "the Google Cloud CLI (google-cloud-cli)",
        _ => "the package that provides it",
    }
}

/// Runs `cmd` to completion within `timeout`; returns its stdout.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String, ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ToolError::Missing {
                package: package_of(&program),
                program: program.clone(),
            },
            _ => ToolError::Spawn {
                program: program.clone(),
                source,
            },
        })?;
    // Drain both pipes on threads so a chatty program cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::Timeout { program, timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(source) => return Err(ToolError::Spawn { program, source }),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        return Err(ToolError::Failed {
            program,
            status: status.to_string(),
            stderr: stderr.trim().lines().next().unwrap_or("").to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_names_its_package() {
        let e = run(
            &mut Command::new("ssh-keygen-not-here"),
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not found"), "{e}");
        let e = ToolError::Missing {
            program: "gcloud".into(),
            package: package_of("/usr/bin/gcloud"),
        }
        .to_string();
        assert_eq!(
            e,
            "gcloud not found: install the Google Cloud CLI (google-cloud-cli)"
        );
    }

    #[test]
    fn output_failure_and_deadline_are_reported() {
        let ok = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(ok, "out\n");
        let e = run(
            Command::new("sh").args(["-c", "echo first >&2; echo second >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("exit status: 3") && e.ends_with(": first"),
            "{e}"
        );
        let e = run(Command::new("sleep").arg("5"), Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, ToolError::Timeout { .. }), "{e}");
    }
}
