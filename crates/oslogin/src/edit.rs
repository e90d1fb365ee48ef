//! The text of every file edit, as pure functions: current text + what is wanted → new text.
//!
//! The texts are Google's (the Go agent's `oslogin.go` and the package's
//! `google_oslogin_control`), so an image can move between Google's agent and this one in both
//! directions: each agent recognises and replaces the other's edits. Every edit owns only
//! marked lines — the `#### Google OS Login control …` blocks, the
//! `# Added by Google Compute Engine OS Login.` comment and the line after it, and the
//! ` cache_oslogin oslogin` suffix of `passwd:`/`group:` in nsswitch.conf — so everything else
//! stays exactly as the admin left it.
//!
//! Two properties hold for every input and are tested as such:
//! - idempotent: `edit(edit(x)) == edit(x)` (each edit first removes the marked lines, then
//!   adds the wanted ones);
//! - reversible: for a file free of marked lines, turning OS Login off after on gives back
//!   `x` byte for byte. A block appended to a file that lacked a final newline is written
//!   without one too, so removing it can restore the missing newline exactly.

/// First line of a block (Google's marker, shared with Google's agent).
pub const BLOCK_START: &str = "#### Google OS Login control. Do not edit this section. ####";
/// Last line of a block.
pub const BLOCK_END: &str = "#### End Google OS Login control section. ####";
/// Marks the single line after it as OS Login's (group.conf, the control script's edits).
pub const ADDED_COMMENT: &str = "# Added by Google Compute Engine OS Login.";
/// What `passwd:` and `group:` get in nsswitch.conf.
pub const NSS_SUFFIX: &str = " cache_oslogin oslogin";
/// `/etc/sudoers.d/google-oslogin`.
pub const SUDOERS_INCLUDE: &str = "#includedir /var/google-sudoers.d\n";
/// The group.conf line that gives sshd logins the `video` group (pam_group).
pub const GROUP_CONF_LINE: &str = "sshd;*;*;Al0000-2400;video";

/// What the sshd_config header block holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshdWant {
    /// `AuthorizedKeysCommand` program (`/usr/bin/google_authorized_keys` or `…_sk`); `None`
    /// when certificates replace keys.
    pub keys_command: Option<String>,
    /// `TrustedUserCAKeys` file (OS Login certificates).
    pub trusted_ca: Option<String>,
    /// `AuthorizedPrincipalsCommand` program, when the package has one.
    pub principals_command: Option<String>,
    /// `enable-oslogin-2fa`.
    pub two_factor: bool,
    /// The footer's per-user include directory (`/var/google-users.d`).
    pub users_dir: String,
}

/// What the PAM blocks of `/etc/pam.d/sshd` hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PamWant {
    pub two_factor: bool,
    /// `account … pam_oslogin_login.so`: only when the installed module implements account
    /// management (guest-oslogin #123: versions without it made `default=die` lock everyone
    /// out).
    pub account_login: bool,
    /// `account … pam_oslogin_admin.so` (writes the per-user sudoers file for `adminLogin`).
    pub account_admin: bool,
}

const PAM_AUTH_OSLOGIN: &str =
    "auth       [success=done perm_denied=die default=ignore] pam_oslogin_login.so";
const PAM_AUTH_GROUP: &str = "auth       [default=ignore] pam_group.so";
const PAM_ACCOUNT_LOGIN: &str =
    "account    [success=ok ignore=ignore default=die] pam_oslogin_login.so";
const PAM_ACCOUNT_ADMIN: &str = "account    [success=ok default=ignore] pam_oslogin_admin.so";
const PAM_SESSION_HOMEDIR: &str = "session    [success=ok default=ignore] pam_mkhomedir.so";

/// The line without its terminator (`\n` or `\r\n`).
fn content(line: &str) -> &str {
    let l = line.strip_suffix('\n').unwrap_or(line);
    l.strip_suffix('\r').unwrap_or(l)
}

/// Removes every OS Login mark: whole blocks, the added comment with the line after it, and
/// stray end markers. When the removed lines reach the end of a file whose last line had no
/// newline, the newline that was added before them goes too.
pub fn strip_marked(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_block = false;
    let mut drop_next = false;
    let mut last_removed_unterminated = false;
    for line in text.split_inclusive('\n') {
        let c = content(line);
        let remove = if in_block {
            if c.contains(BLOCK_END) {
                in_block = false;
            }
            true
        } else if drop_next {
            drop_next = false;
            true
        } else if c.contains(BLOCK_START) {
            in_block = true;
            true
        } else if c.contains(BLOCK_END) {
            true
        } else if c.contains(ADDED_COMMENT) {
            drop_next = true;
            true
        } else {
            false
        };
        if remove {
            last_removed_unterminated = !line.ends_with('\n');
        } else {
            out.push_str(line);
            last_removed_unterminated = false;
        }
    }
    if last_removed_unterminated && out.ends_with('\n') {
        out.pop();
    }
    out
}

/// `lines` as a block at the very top of `text`.
fn prepend(text: &str, lines: &[String]) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(text);
    out
}

/// `lines` at the end of `text`, inheriting its final-newline state (see the module doc).
fn append(text: &str, lines: &[String]) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    out.push_str(text);
    let terminated = text.is_empty() || text.ends_with('\n');
    if !terminated {
        out.push('\n');
    }
    out.push_str(&lines.join("\n"));
    if terminated {
        out.push('\n');
    }
    out
}

fn block(inner: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v = vec![BLOCK_START.to_string()];
    v.extend(inner);
    v.push(BLOCK_END.to_string());
    v
}

/// `/etc/ssh/sshd_config`: a header block first (sshd takes the first value it sees, and a
/// block at the top precedes any `Match`), and a footer with the per-user include and the 2FA
/// exception for service accounts. The footer opens with `Match all` so an admin's trailing
/// `Match` block cannot make it conditional. `None` removes both.
pub fn sshd_config(current: &str, want: Option<&SshdWant>) -> String {
    let base = strip_marked(current);
    let Some(w) = want else { return base };
    let mut head = Vec::new();
    if let Some(ca) = &w.trusted_ca {
        head.push(format!("TrustedUserCAKeys {ca}"));
        if let Some(cmd) = &w.principals_command {
            head.push(format!("AuthorizedPrincipalsCommand {cmd} %u %k"));
            head.push("AuthorizedPrincipalsCommandUser root".to_string());
        }
    }
    if let Some(cmd) = &w.keys_command {
        head.push(format!("AuthorizedKeysCommand {cmd}"));
        head.push("AuthorizedKeysCommandUser root".to_string());
    }
    if w.two_factor {
        head.push("AuthenticationMethods publickey,keyboard-interactive".to_string());
        head.push("ChallengeResponseAuthentication yes".to_string());
    }
    let mut foot = vec![
        "Match all".to_string(),
        format!("Include {}/*", w.users_dir),
    ];
    if w.two_factor {
        foot.push("Match User sa_*".to_string());
        foot.push("       AuthenticationMethods publickey".to_string());
    }
    append(&prepend(&base, &block(head)), &block(foot))
}

/// `/etc/nsswitch.conf`: ` cache_oslogin oslogin` after the services of `passwd:` and
/// `group:` (before a trailing comment, which glibc would otherwise swallow it into), unless
/// the line already names oslogin; off removes exactly that suffix and nothing else (Google's
/// agent once cut every module after it, guest-agent #400).
pub fn nsswitch(current: &str, on: bool) -> String {
    let mut out = String::with_capacity(current.len() + 64);
    for line in current.split_inclusive('\n') {
        let c = content(line);
        let terminator = &line[c.len()..];
        let t = c.trim_start();
        if !(t.starts_with("passwd:") || t.starts_with("group:")) {
            out.push_str(line);
            continue;
        }
        if on {
            if c.contains("oslogin") {
                out.push_str(line);
                continue;
            }
            let services_end = c.find('#').unwrap_or(c.len());
            let at = c[..services_end].trim_end().len();
            out.push_str(&c[..at]);
            out.push_str(NSS_SUFFIX);
            out.push_str(&c[at..]);
            out.push_str(terminator);
        } else {
            match c.find(NSS_SUFFIX) {
                Some(at) => {
                    out.push_str(&c[..at]);
                    out.push_str(&c[at + NSS_SUFFIX.len()..]);
                    out.push_str(terminator);
                }
                None => out.push_str(line),
            }
        }
    }
    out
}

/// `/etc/pam.d/sshd`: the auth lines in a block at the top (pam_group; with 2FA
/// pam_oslogin_login first), account and session lines in a block at the end (appended to
/// their stacks). Nothing ever goes into `/etc/pam.d/su` (the control script's su line broke
/// `su`, guest-oslogin #123). `None` removes both blocks.
pub fn pam_sshd(current: &str, want: Option<&PamWant>) -> String {
    let base = strip_marked(current);
    let Some(w) = want else { return base };
    let mut head = Vec::new();
    if w.two_factor {
        head.push(PAM_AUTH_OSLOGIN.to_string());
    }
    head.push(PAM_AUTH_GROUP.to_string());
    let mut foot = Vec::new();
    if w.account_login {
        foot.push(PAM_ACCOUNT_LOGIN.to_string());
    }
    if w.account_admin {
        foot.push(PAM_ACCOUNT_ADMIN.to_string());
    }
    foot.push(PAM_SESSION_HOMEDIR.to_string());
    append(&prepend(&base, &block(head)), &block(foot))
}

/// `/etc/security/group.conf`: Google's comment and the `sshd` line at the end.
pub fn group_conf(current: &str, on: bool) -> String {
    let base = strip_marked(current);
    if !on {
        return base;
    }
    append(
        &base,
        &[ADDED_COMMENT.to_string(), GROUP_CONF_LINE.to_string()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(two_factor: bool) -> SshdWant {
        SshdWant {
            keys_command: Some("/usr/bin/google_authorized_keys".into()),
            trusted_ca: None,
            principals_command: None,
            two_factor,
            users_dir: "/var/google-users.d".into(),
        }
    }

    const PAM_ALL: PamWant = PamWant {
        two_factor: true,
        account_login: true,
        account_admin: true,
    };

    /// Inputs that have tripped line editors: no final newline, CRLF, blank files, comments
    /// that look like directives, trailing Match blocks, tabs, non-ASCII.
    fn corpus() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            "\n",
            "\n\n",
            "a",
            "a\n",
            "a\nb",
            "a\r\nb\r\n",
            "# only a comment",
            "Include /etc/ssh/sshd_config.d/*.conf\n\nPort 22\n#AuthorizedKeysCommand none\nMatch User backup\n    ForceCommand internal-sftp\n",
            "Match Address 10.0.0.0/8\n\tPasswordAuthentication yes",
            "passwd:         files systemd\ngroup:          files systemd\nshadow:         files\n",
            "passwd: files # local only\ngroup:\tfiles\t\n",
            "  passwd: files\r\ngroup: files sss\r\n",
            "passwd: files",
            "@include common-auth\naccount    required     pam_nologin.so\n@include common-account\nsession required pam_loginuid.so\n@include common-password\n",
            "# Gruppen für Benutzer\n*;*;*;Al0000-2400;plugdev\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Pseudo-random line soup (deterministic): keywords, blanks, comments, odd endings.
        let pieces = [
            "passwd: files",
            "group: compat",
            "Match all",
            "  Port 2222",
            "#",
            "",
            "auth required pam_unix.so",
            "x;y;z",
            "\t",
            "ü",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            let mut s = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 7) as usize;
            for i in 0..n {
                let p = pieces[((seed >> (i * 4)) % pieces.len() as u64) as usize];
                s.push_str(p);
                s.push_str(if (seed >> (i + 30)) & 3 == 0 {
                    "\r\n"
                } else {
                    "\n"
                });
            }
            if seed & 1 == 1 {
                s.pop();
            }
            v.push(s);
        }
        v
    }

    #[test]
    fn off_after_on_restores_every_file_byte_for_byte() {
        for x in corpus() {
            for w in [want(false), want(true)] {
                let on = sshd_config(&x, Some(&w));
                assert_ne!(on, x);
                assert_eq!(sshd_config(&on, None), x, "sshd_config {x:?}");
            }
            for p in [
                PAM_ALL,
                PamWant {
                    two_factor: false,
                    account_login: false,
                    account_admin: false,
                },
            ] {
                assert_eq!(pam_sshd(&pam_sshd(&x, Some(&p)), None), x, "pam {x:?}");
            }
            assert_eq!(
                group_conf(&group_conf(&x, true), false),
                x,
                "group.conf {x:?}"
            );
            assert_eq!(nsswitch(&nsswitch(&x, true), false), x, "nsswitch {x:?}");
        }
    }

    #[test]
    fn every_edit_is_idempotent() {
        for x in corpus() {
            let s = sshd_config(&x, Some(&want(true)));
            assert_eq!(sshd_config(&s, Some(&want(true))), s);
            let s2 = sshd_config(&s, Some(&want(false)));
            assert_eq!(sshd_config(&x, Some(&want(false))), s2, "switching 2FA off");
            let p = pam_sshd(&x, Some(&PAM_ALL));
            assert_eq!(pam_sshd(&p, Some(&PAM_ALL)), p);
            let g = group_conf(&x, true);
            assert_eq!(group_conf(&g, true), g);
            let n = nsswitch(&x, true);
            assert_eq!(nsswitch(&n, true), n);
            assert_eq!(
                sshd_config(&sshd_config(&x, None), None),
                sshd_config(&x, None)
            );
        }
    }

    #[test]
    fn sshd_block_goes_first_and_the_footer_last() {
        let admin = "# admin's comment\nInclude /etc/ssh/sshd_config.d/*.conf\nPort 22\nMatch User backup\n    ForceCommand internal-sftp\n";
        let on = sshd_config(admin, Some(&want(false)));
        assert_eq!(
            on,
            format!(
                "{BLOCK_START}\nAuthorizedKeysCommand /usr/bin/google_authorized_keys\n\
                 AuthorizedKeysCommandUser root\n{BLOCK_END}\n{admin}\
                 {BLOCK_START}\nMatch all\nInclude /var/google-users.d/*\n{BLOCK_END}\n"
            )
        );
        let two = sshd_config(admin, Some(&want(true)));
        assert!(two.starts_with(&format!(
            "{BLOCK_START}\nAuthorizedKeysCommand /usr/bin/google_authorized_keys\n\
             AuthorizedKeysCommandUser root\n\
             AuthenticationMethods publickey,keyboard-interactive\n\
             ChallengeResponseAuthentication yes\n{BLOCK_END}\n"
        )));
        assert!(two.ends_with(&format!(
            "Include /var/google-users.d/*\nMatch User sa_*\n       AuthenticationMethods publickey\n{BLOCK_END}\n"
        )));
    }

    #[test]
    fn sshd_certificates_lines() {
        let mut w = want(false);
        w.trusted_ca = Some("/etc/ssh/oslogin_trustedca.pub".into());
        let on = sshd_config("", Some(&w));
        assert!(on.starts_with(&format!(
            "{BLOCK_START}\nTrustedUserCAKeys /etc/ssh/oslogin_trustedca.pub\n\
             AuthorizedKeysCommand /usr/bin/google_authorized_keys\n"
        )));
        w.principals_command = Some("/usr/bin/google_authorized_principals".into());
        w.keys_command = None;
        let on = sshd_config("", Some(&w));
        assert!(on.starts_with(&format!(
            "{BLOCK_START}\nTrustedUserCAKeys /etc/ssh/oslogin_trustedca.pub\n\
             AuthorizedPrincipalsCommand /usr/bin/google_authorized_principals %u %k\n\
             AuthorizedPrincipalsCommandUser root\n{BLOCK_END}\n"
        )));
    }

    #[test]
    fn googles_own_edits_are_recognised_and_replaced() {
        // What Google's Go agent writes (header, admin text, footer) and the control script's
        // comment-marked line: ours replace them, off removes them.
        let google = format!(
            "{BLOCK_START}\nAuthorizedKeysCommand /usr/bin/google_authorized_keys\nAuthorizedKeysCommandUser root\n{BLOCK_END}\nPort 22\n{BLOCK_START}\nInclude /var/google-users.d/*\n{BLOCK_END}\n"
        );
        assert_eq!(sshd_config(&google, None), "Port 22\n");
        assert_eq!(
            sshd_config(&google, Some(&want(false))),
            sshd_config("Port 22\n", Some(&want(false)))
        );
        let control = format!("auth required pam_unix.so\n{ADDED_COMMENT}\n{PAM_ACCOUNT_LOGIN}\n");
        assert_eq!(pam_sshd(&control, None), "auth required pam_unix.so\n");
    }

    #[test]
    fn nsswitch_suffix_rules() {
        for (rule, before, after) in [
            (
                "appended to passwd and group only",
                "passwd:         files systemd\ngroup:          files systemd\nshadow:         files\nhosts: files dns\n",
                "passwd:         files systemd cache_oslogin oslogin\ngroup:          files systemd cache_oslogin oslogin\nshadow:         files\nhosts: files dns\n",
            ),
            (
                "before a trailing comment and its blanks",
                "passwd: files   # local\n",
                "passwd: files cache_oslogin oslogin   # local\n",
            ),
            (
                "CRLF kept",
                "group: files\r\n",
                "group: files cache_oslogin oslogin\r\n",
            ),
            (
                "no final newline kept",
                "passwd: files",
                "passwd: files cache_oslogin oslogin",
            ),
            (
                "a line that already names oslogin is left alone",
                "passwd: files oslogin\n",
                "passwd: files oslogin\n",
            ),
            (
                "commented-out lines are not lines",
                "#passwd: files\n",
                "#passwd: files\n",
            ),
        ] {
            assert_eq!(nsswitch(before, true), after, "{rule}");
        }
        // Off removes the suffix only, never what follows it (guest-agent #400).
        assert_eq!(
            nsswitch("passwd: files cache_oslogin oslogin sss\n", false),
            "passwd: files sss\n"
        );
    }

    #[test]
    fn pam_blocks() {
        let base = "@include common-auth\n@include common-account\n@include common-session\n";
        let on = pam_sshd(base, Some(&PAM_ALL));
        assert_eq!(
            on,
            format!(
                "{BLOCK_START}\n{PAM_AUTH_OSLOGIN}\n{PAM_AUTH_GROUP}\n{BLOCK_END}\n{base}\
                 {BLOCK_START}\n{PAM_ACCOUNT_LOGIN}\n{PAM_ACCOUNT_ADMIN}\n{PAM_SESSION_HOMEDIR}\n{BLOCK_END}\n"
            )
        );
        let plain = pam_sshd(
            base,
            Some(&PamWant {
                two_factor: false,
                account_login: false,
                account_admin: false,
            }),
        );
        assert!(!plain.contains("pam_oslogin"), "{plain}");
        assert!(plain.contains(PAM_AUTH_GROUP) && plain.contains(PAM_SESSION_HOMEDIR));
    }

    #[test]
    fn group_conf_line() {
        assert_eq!(
            group_conf("# comment\n", true),
            format!("# comment\n{ADDED_COMMENT}\n{GROUP_CONF_LINE}\n")
        );
        assert_eq!(
            group_conf("# comment", true),
            format!("# comment\n{ADDED_COMMENT}\n{GROUP_CONF_LINE}")
        );
    }
}
