//! Manual pages for the shipped binaries, generated from their clap definitions with
//! `clap_mangen` (NAME, SYNOPSIS, OPTIONS come from the same definition the binary parses with or
//! is checked against), plus what clap cannot know: FILES, ENVIRONMENT, SIGNALS, EXIT STATUS,
//! SEE ALSO, written next to each page in [`pages`].
//!
//! The resident daemons parse their five flags by hand (clap's parser would stay mapped in every
//! idle daemon), but their flags are still the `clap::Args` definition `gce_agent::CommonArgs`:
//! this crate uses it, the daemons never link it. `tests/help.rs` checks each page's flags and
//! summary against the built binary's `--help`.
//!
//! Adding a binary: one function in `pages.rs` and one line in [`pages::all`]; scripts/package
//! ships whatever `gce-man` writes (the package manifests take `man1/*` and `man8/*`).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_mangen::roff::{Roff, bold, roman};

pub mod pages;

/// Manual sections used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// User commands.
    User = 1,
    /// System administration commands and daemons.
    Admin = 8,
}

impl Section {
    fn title(self) -> &'static str {
        match self {
            Section::User => "User Commands",
            Section::Admin => "System Manager's Manual",
        }
    }
}

/// One manual page.
pub struct Page {
    /// The binary's name, as installed.
    pub name: &'static str,
    pub section: Section,
    /// The command line: name, one-line summary (`about`) and arguments.
    pub command: clap::Command,
    /// DESCRIPTION paragraphs, separated by blank lines.
    pub description: &'static str,
    /// Files read or written, with what for.
    pub files: Vec<(String, String)>,
    /// Environment variables read.
    pub environment: Vec<(String, String)>,
    /// Signals handled (daemons).
    pub signals: Vec<(String, String)>,
    pub exit_status: &'static str,
    /// Other pages, `name(section)`.
    pub see_also: &'static [&'static str],
    /// The binary answers `--help`, which `tests/help.rs` compares with this page.
    pub has_help: bool,
}

impl Page {
    /// The page's file name, `NAME.SECTION`.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.section as u8)
    }

    /// The page as roff.
    pub fn render(&self) -> std::io::Result<Vec<u8>> {
        let command = self
            .command
            .clone()
            .name(self.name)
            .bin_name(self.name)
            .long_about(self.description.trim().to_string());
        let man = clap_mangen::Man::new(command.clone())
            .section((self.section as u8).to_string())
            .source(format!("gce-guest-agents {}", env!("CARGO_PKG_VERSION")))
            .manual(self.section.title());
        let mut out = Vec::new();
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        if command.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(&mut out)?;
        }
        let mut roff = Roff::default();
        for (title, items) in [
            ("FILES", &self.files),
            ("ENVIRONMENT", &self.environment),
            ("SIGNALS", &self.signals),
        ] {
            if !items.is_empty() {
                roff.control("SH", [title]);
                for (term, text) in items {
                    roff.control("TP", []);
                    roff.text([bold(term.as_str())]);
                    roff.text([roman(text.as_str())]);
                }
            }
        }
        roff.control("SH", ["EXIT STATUS"]);
        roff.text([roman(self.exit_status.trim())]);
        if !self.see_also.is_empty() {
            roff.control("SH", ["SEE ALSO"]);
            roff.text([roman(self.see_also.join(", "))]);
        }
        roff.to_writer(&mut out)?;
        if command.get_version().is_some() {
            man.render_version_section(&mut out)?;
        }
        Ok(out)
    }
}

/// Writes every page of [`pages::all`] to `out/manN/NAME.N`; returns the paths.
pub fn generate(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for page in pages::all() {
        let dir = out.join(format!("man{}", page.section as u8));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(page.file_name());
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&page.render()?)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page has the sections a reader looks for, names its binary, and says how to reach
    /// the metadata server when the binary talks to it.
    #[test]
    fn every_page_has_the_sections_a_reader_expects() {
        let pages = pages::all();
        let mut names: Vec<&str> = pages.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), pages.len(), "one page per binary");
        for page in &pages {
            let text = String::from_utf8(page.render().expect("render")).expect("utf-8");
            for section in [
                ".SH NAME",
                ".SH SYNOPSIS",
                ".SH DESCRIPTION",
                ".SH FILES",
                ".SH \"EXIT STATUS\"",
                ".SH \"SEE ALSO\"",
            ] {
                assert!(text.contains(section), "{}: no {section}", page.name);
            }
            let title = format!(".TH {} {}", page.name, page.section as u8);
            assert!(
                text.lines().any(|l| l.starts_with(&title)),
                "{}: no title line {title}",
                page.name
            );
            assert!(
                page.environment
                    .iter()
                    .any(|(v, _)| v == "GCE_METADATA_HOST"),
                "{}: every shipped binary may ask the metadata server",
                page.name
            );
            assert!(
                page.command.get_about().is_some(),
                "{}: a one-line summary",
                page.name
            );
        }
    }

    #[test]
    fn generate_writes_one_file_per_page_under_its_section() {
        let dir = std::env::temp_dir().join(format!("gce-man-{}", std::process::id()));
        let written = generate(&dir).expect("generate");
        assert_eq!(written.len(), pages::all().len());
        for page in pages::all() {
            let path = dir
                .join(format!("man{}", page.section as u8))
                .join(page.file_name());
            assert!(written.contains(&path), "{}", path.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
