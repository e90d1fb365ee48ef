//! Each page tells the truth about its binary: the one-line summary and the flags on the page are
//! those the built binary's `--help` prints (the daemons parse by hand, so this is what keeps the
//! clap definition the page comes from and the hand parser in step for a reader).

use std::collections::BTreeSet;
use std::process::Command;

use gce_testkit::bin;

/// `--long` flags in a help text.
fn long_flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '=')
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn page_flags_and_summary_match_the_binarys_help() {
    for page in gce_man::pages::all().into_iter().filter(|p| p.has_help) {
        let out = Command::new(bin(page.name))
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", page.name));
        assert!(out.status.success(), "{} --help failed", page.name);
        let help = String::from_utf8_lossy(&out.stdout);
        let about = page
            .command
            .get_about()
            .map(|a| a.to_string())
            .unwrap_or_default();
        assert_eq!(
            help.lines().next().unwrap_or_default().trim(),
            about,
            "{}: summary",
            page.name
        );
        let mut cmd = page.command.clone();
        cmd.build();
        let on_page: BTreeSet<String> = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        assert_eq!(long_flags(&help), on_page, "{}: flags", page.name);
    }
}
