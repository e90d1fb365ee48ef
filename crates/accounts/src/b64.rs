//! Standard base64 (RFC 4648 §4), just what authorized_keys needs: a strict
//! decoder for key blobs and an unpadded encoder for `SHA256:` fingerprints.
//! Written by hand to avoid a dependency for forty lines.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some((c - b'A') as u32),
        b'a'..=b'z' => Some((c - b'a') as u32 + 26),
        b'0'..=b'9' => Some((c - b'0') as u32 + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes padded standard base64. Errors name what is wrong, for log lines.
pub(crate) fn decode(s: &str) -> Result<Vec<u8>, &'static str> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err("empty");
    }
    if !b.len().is_multiple_of(4) {
        return Err("length is not a multiple of 4");
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return Err("too much '=' padding");
    }
    let body = &b[..b.len() - pad];
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in body {
        let v = value(c).ok_or(if c == b'=' {
            "'=' before the end"
        } else {
            "character outside the base64 alphabet"
        })?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero, or the text is not the canonical encoding.
    if acc != 0 {
        return Err("non-zero trailing bits");
    }
    Ok(out)
}

/// Encodes without `=` padding, as OpenSSH prints fingerprints.
pub(crate) fn encode_unpadded(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..=n {
            out.push(ALPHABET[(v >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let rows = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in rows {
            if !plain.is_empty() {
                assert_eq!(decode(enc).unwrap(), plain.as_bytes(), "{enc}");
            }
            assert_eq!(encode_unpadded(plain.as_bytes()), enc.trim_end_matches('='));
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "Zg=",
            "Zg===",
            "Z===",
            "Zm9v!A==",
            "Zh==",
            "Z=g=",
            "Zm9v Yg==",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} accepted");
        }
    }
}
