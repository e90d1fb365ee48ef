//! `oslogin/certificates` → the `TrustedUserCAKeys` file.
//!
//! Google's agent serves the same answer through a named pipe that sshd opens at every
//! authentication; a regular file, refreshed at every metadata change and every
//! `ca_refresh_secs`, needs no thread parked on a FIFO and survives the agent being stopped.

use serde::Deserialize;

#[derive(Deserialize)]
struct Certificates {
    #[serde(rename = "trustedCertificateAuthorities", default)]
    cas: Vec<Ca>,
}

#[derive(Deserialize)]
struct Ca {
    #[serde(rename = "publicKey", default)]
    public_key: String,
}

/// The file's text: one CA key per line. Hostile input (a key that spans lines, a blank key,
/// not JSON) refuses the whole answer, so a bad server never half-replaces the trusted set.
pub fn trusted_ca_text(json: &str) -> Result<String, String> {
    let certs: Certificates =
        serde_json::from_str(json).map_err(|e| format!("not a certificates answer: {e}"))?;
    let mut out = String::new();
    for ca in &certs.cas {
        let key = ca.public_key.trim();
        if key.is_empty() || key.contains(['\n', '\r', '\0']) {
            return Err(format!("refusing CA key {:?}", ca.public_key));
        }
        if key.split_ascii_whitespace().count() < 2 {
            return Err(format!("not an SSH public key: {key:?}"));
        }
        out.push_str(key);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_to_file_text() {
        for (rule, json, want) in [
            (
                "one key per line",
                r#"{"trustedCertificateAuthorities":[{"publicKey":"ssh-rsa AAAA ca1"},{"publicKey":" ssh-ed25519 BBBB\n"}]}"#,
                Ok("ssh-rsa AAAA ca1\nssh-ed25519 BBBB\n"),
            ),
            (
                "no CAs is an empty file",
                r#"{"trustedCertificateAuthorities":[]}"#,
                Ok(""),
            ),
            ("absent list too", "{}", Ok("")),
        ] {
            assert_eq!(
                trusted_ca_text(json).as_deref(),
                want.map(|s: &str| s),
                "{rule}"
            );
        }
        for (rule, json) in [
            ("not JSON", "<html>"),
            (
                "key spanning lines",
                r#"{"trustedCertificateAuthorities":[{"publicKey":"ssh-rsa AAAA\nssh-rsa BBBB"}]}"#,
            ),
            (
                "blank key",
                r#"{"trustedCertificateAuthorities":[{"publicKey":" "}]}"#,
            ),
            (
                "not a key",
                r#"{"trustedCertificateAuthorities":[{"publicKey":"hello"}]}"#,
            ),
        ] {
            assert!(trusted_ca_text(json).is_err(), "{rule}");
        }
    }
}
