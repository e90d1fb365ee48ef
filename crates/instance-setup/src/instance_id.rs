//! The recorded instance id: `google_instance_id`, the same file and format as Google's agents,
//! so an image moved between their agent and ours keeps its host keys.
//!
//! Google's agents read the file with surrounding whitespace trimmed; the Go agent (Debian's 2021
//! build included) writes `"<id>\n"`, the current one `"<id>"`. We write the former. When the file is missing or empty the
//! legacy `[Instance] instance_id` config key (the Python agent kept the id there) is used.

use std::path::PathBuf;

/// The file's name (Google's).
pub const ID_FILE: &str = "google_instance_id";

/// The id file for `[Instance] instance_id_dir`: `DIR/google_instance_id`. Google's Go agent of
/// 2023–2026 read the key as the file itself (`instance_id_dir = /etc/google_instance_id`), so a
/// value already ending in the file name is taken as the file.
pub fn id_file_path(instance_id_dir: &str) -> PathBuf {
    let dir = instance_id_dir.trim();
    let dir = if dir.is_empty() { "/etc" } else { dir };
    let p = PathBuf::from(dir);
    if p.file_name().is_some_and(|n| n == ID_FILE) {
        p
    } else {
        p.join(ID_FILE)
    }
}

/// The recorded id: the file's trimmed content, else the legacy config value; `None` if neither
/// holds one.
pub fn recorded_id(file: Option<&[u8]>, legacy: &str) -> Option<String> {
    let from_file = file
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty());
    from_file.or_else(|| Some(legacy.trim().to_string()).filter(|s| !s.is_empty()))
}

/// Which boot of which instance this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// The recorded id is this instance's: an ordinary reboot.
    SameInstance,
    /// First boot of this instance (a clone of an image, or no record at all).
    NewInstance { recorded: Option<String> },
}

/// Compare the recorded id with the metadata's (a real id, never 0).
pub fn classify(recorded: Option<&str>, current: u64) -> Boot {
    match recorded {
        Some(r) if r == current.to_string() => Boot::SameInstance,
        other => Boot::NewInstance {
            recorded: other.map(str::to_string),
        },
    }
}

/// The id file's content for `id`.
pub fn file_contents(id: u64) -> String {
    format!("{id}\n")
}

/// Whether the file itself must be (re)written to say `id` (also on a same-instance boot whose
/// id came only from the legacy config key).
pub fn needs_record(file: Option<&[u8]>, id: u64) -> bool {
    recorded_id(file, "").as_deref() != Some(id.to_string().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_file_path_follows_both_google_conventions() {
        let rows = [
            ("/etc", "/etc/google_instance_id"),
            ("", "/etc/google_instance_id"),
            (" /var/lib/google ", "/var/lib/google/google_instance_id"),
            ("/etc/google_instance_id", "/etc/google_instance_id"),
            ("/etc/", "/etc/google_instance_id"),
        ];
        for (dir, want) in rows {
            assert_eq!(id_file_path(dir), PathBuf::from(want), "{dir:?}");
        }
    }

    /// Rows: file content, legacy config value, metadata id → boot, file to be written.
    #[test]
    fn first_boot_is_a_changed_id() {
        const ID: u64 = 5737554347302044216;
        let new = |r: Option<&str>| Boot::NewInstance {
            recorded: r.map(str::to_string),
        };
        let rows: [(Option<&[u8]>, &str, Boot, bool); 9] = [
            // Ordinary reboot: both Google formats, with or without the newline.
            (
                Some(b"5737554347302044216\n"),
                "",
                Boot::SameInstance,
                false,
            ),
            (Some(b"5737554347302044216"), "", Boot::SameInstance, false),
            (
                Some(b"  5737554347302044216 \r\n"),
                "",
                Boot::SameInstance,
                false,
            ),
            // A clone of an image: another id recorded.
            (Some(b"123\n"), "", new(Some("123")), true),
            // Nothing recorded anywhere.
            (None, "", new(None), true),
            (Some(b"\n"), "", new(None), true),
            // The legacy config key counts when the file says nothing; the file is then written.
            (None, "5737554347302044216", Boot::SameInstance, true),
            (Some(b""), "999", new(Some("999")), true),
            // The file wins over the legacy key.
            (
                Some(b"5737554347302044216\n"),
                "999",
                Boot::SameInstance,
                false,
            ),
        ];
        for (file, legacy, boot, write) in rows {
            let recorded = recorded_id(file, legacy);
            assert_eq!(
                classify(recorded.as_deref(), ID),
                boot,
                "{file:?} {legacy:?}"
            );
            assert_eq!(needs_record(file, ID), write, "{file:?} {legacy:?}");
        }
        assert_eq!(file_contents(ID), "5737554347302044216\n");
    }
}
