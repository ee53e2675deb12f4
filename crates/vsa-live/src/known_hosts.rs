//! SSH host keys against an OpenSSH `known_hosts` file
//! (`repo.known_hosts_file`): how OpenSSH names a host, which lines match
//! it, and what the file says about a key.

/// The port an SSH URL names, 22 when none: `ssh://[user@]host[:port]/path`
/// (the scp-like `[user@]host:path` has no port).
pub(crate) fn ssh_port(url: &str) -> u16 {
    url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "ssh" | "ssh+git" | "git+ssh"))
        .and_then(|u| u.port())
        .unwrap_or(22)
}

/// How OpenSSH names a host in `known_hosts`: `host`, or `[host]:port`
/// off port 22.
pub(crate) fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The key type an SSH public key blob starts with (`ssh-ed25519`...).
pub(crate) fn ssh_key_type(blob: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let name = blob.get(4..4usize.checked_add(len)?)?;
    std::str::from_utf8(name).ok().map(str::to_owned)
}

/// What a `known_hosts` file says about a host's key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KnownHost {
    Match,
    /// The host has a key of this type, a different one (line number).
    Changed {
        line: usize,
    },
    /// The key is listed as `@revoked` (line number).
    Revoked {
        line: usize,
    },
    /// No key of this type for the host; `other_types`: the types it
    /// has keys of; `hashed`: the file has hashed host names, which are not
    /// checked.
    Unknown {
        other_types: Vec<String>,
        hashed: bool,
    },
}

/// Checks a host key (type and base64 blob) for `name` (`host` or
/// `[host]:port`) against OpenSSH `known_hosts` text: comma-separated
/// patterns with `*`, `?` and `!`, `@revoked` lines (for any host);
/// `@cert-authority` lines and hashed names are skipped.
pub(crate) fn check_known_hosts(text: &str, name: &str, key_type: &str, key: &str) -> KnownHost {
    let mut changed = None;
    let mut found = false;
    let mut hashed = false;
    let mut other_types: Vec<String> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let mut fields = line.split_whitespace();
        let Some(mut first) = fields.next() else {
            continue;
        };
        if first.starts_with('#') {
            continue;
        }
        let marker = first.strip_prefix('@');
        if marker.is_some() {
            match fields.next() {
                Some(f) => first = f,
                None => continue,
            }
        }
        let (Some(entry_type), Some(entry_key)) = (fields.next(), fields.next()) else {
            continue;
        };
        let same_key = entry_type == key_type && entry_key == key;
        // A revoked key is refused whatever host names the line has,
        // hashed ones included.
        if marker == Some("revoked") && same_key {
            return KnownHost::Revoked { line: line_no };
        }
        if first.starts_with("|1|") {
            hashed = true;
            continue;
        }
        if !host_matches(first, name) {
            continue;
        }
        match marker {
            Some(_) => {}
            None if same_key => found = true,
            None if entry_type == key_type => {
                changed.get_or_insert(line_no);
            }
            None => {
                if !other_types.iter().any(|t| t == entry_type) {
                    other_types.push(entry_type.to_owned());
                }
            }
        }
    }
    if found {
        KnownHost::Match
    } else if let Some(line) = changed {
        KnownHost::Changed { line }
    } else {
        KnownHost::Unknown {
            other_types,
            hashed,
        }
    }
}

/// OpenSSH host pattern lists: some pattern matches and no `!pattern` does.
fn host_matches(patterns: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mut matched = false;
    for pattern in patterns.split(',') {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('!') {
            Some(negated) if glob(negated.as_bytes(), name.as_bytes()) => return false,
            Some(_) => {}
            None => matched |= glob(pattern.as_bytes(), name.as_bytes()),
        }
    }
    matched
}

/// `*` (any run) and `?` (any one byte) wildcards.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheServer";

    #[test]
    fn ssh_ports_come_from_the_url() {
        assert_eq!(ssh_port("ssh://git@example.com:2222/ops/repo.git"), 2222);
        assert_eq!(ssh_port("ssh://example.com/ops/repo.git"), 22);
        assert_eq!(ssh_port("ssh://root@[::1]:2200/srv/repo.git"), 2200);
        assert_eq!(ssh_port("git@example.com:ops/repo.git"), 22);
        assert_eq!(known_hosts_name("127.0.0.1", 2222), "[127.0.0.1]:2222");
        assert_eq!(known_hosts_name("example.com", 22), "example.com");
    }

    #[test]
    fn known_hosts_match_change_revocation_and_unknown_hosts() {
        let text = format!(
            "# comment\n\n\
             example.com,192.0.2.1 ssh-ed25519 {KEY}\n\
             [127.0.0.1]:2222 ssh-ed25519 AAAAother\n\
             [127.0.0.1]:2222 ssh-rsa AAAArsa\n\
             *.example.org,!bad.example.org ssh-ed25519 {KEY} comment here\n\
             @revoked * ssh-ed25519 AAAArevoked\n\
             @cert-authority * ssh-ed25519 {KEY}\n\
             |1|c2FsdA==|aGFzaA== ssh-ed25519 {KEY}\n"
        );
        let check = |name: &str, key: &str| check_known_hosts(&text, name, "ssh-ed25519", key);
        assert_eq!(check("example.com", KEY), KnownHost::Match);
        assert_eq!(check("EXAMPLE.com", KEY), KnownHost::Match);
        assert_eq!(check("192.0.2.1", KEY), KnownHost::Match);
        assert_eq!(check("git.example.org", KEY), KnownHost::Match);
        assert_eq!(
            check("[127.0.0.1]:2222", KEY),
            KnownHost::Changed { line: 4 }
        );
        let unknown = |other_types: &[&str], hashed| KnownHost::Unknown {
            other_types: other_types.iter().map(|t| t.to_string()).collect(),
            hashed,
        };
        assert_eq!(check("bad.example.org", KEY), unknown(&[], true));
        // Port 22's entry is not another port's.
        assert_eq!(check("[example.com]:2222", KEY), unknown(&[], true));
        // Keys of another type only: still unknown, and said so.
        assert_eq!(
            check_known_hosts(&text, "192.0.2.1", "ecdsa-sha2-nistp256", "AAAAecdsa"),
            unknown(&["ssh-ed25519"], true)
        );
        assert_eq!(
            check("example.com", "AAAArevoked"),
            KnownHost::Revoked { line: 7 }
        );
        // Revoked under a hashed name, listed in clear elsewhere: revoked.
        let hashed_revocation = format!(
            "@revoked |1|c2FsdA==|aGFzaA== ssh-ed25519 {KEY}\nexample.com ssh-ed25519 {KEY}\n"
        );
        assert_eq!(
            check_known_hosts(&hashed_revocation, "example.com", "ssh-ed25519", KEY),
            KnownHost::Revoked { line: 1 }
        );
        // An RSA key is checked against RSA entries only.
        assert_eq!(
            check_known_hosts(&text, "[127.0.0.1]:2222", "ssh-rsa", "AAAArsa"),
            KnownHost::Match
        );
        assert_eq!(
            check_known_hosts("", "example.com", "ssh-ed25519", KEY),
            unknown(&[], false)
        );
    }

    #[test]
    fn globs_and_key_types() {
        assert!(glob(b"*.example.com", b"a.b.example.com"));
        assert!(glob(b"10.0.0.?", b"10.0.0.7"));
        assert!(!glob(b"10.0.0.?", b"10.0.0.17"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"a*c", b"abd"));
        let blob = [
            0, 0, 0, 11, b's', b's', b'h', b'-', b'e', b'd', b'2', b'5', b'5', b'1', b'9', 0,
        ];
        assert_eq!(ssh_key_type(&blob).as_deref(), Some("ssh-ed25519"));
        assert_eq!(ssh_key_type(&[0, 0, 0, 40, b's']), None);
    }

    proptest::proptest! {
        /// Whatever a known_hosts file, a URL or a key blob holds, the
        /// checks answer; they never panic.
        #[test]
        fn arbitrary_input_never_panics(
            text in "(?s).{0,400}",
            name in ".{0,40}",
            key in "[A-Za-z0-9+/=]{0,40}",
            url in ".{0,60}",
            blob in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let _ = check_known_hosts(&text, &name, "ssh-ed25519", &key);
            let _ = ssh_port(&url);
            let _ = ssh_key_type(&blob);
            let _ = glob(text.as_bytes(), name.as_bytes());
        }

        /// A host's own line matches, in clear, among any other lines, as
        /// long as no line revokes or contradicts it.
        #[test]
        fn a_listed_key_matches(
            host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,6}){0,2}",
            port in proptest::option::of(1u16..),
            key in "AAAA[A-Za-z0-9+/]{8,40}",
            others in proptest::collection::vec("[a-z]{1,10}\\.example [a-z0-9-]{3,12} AAAA[A-Za-z0-9+/]{4,20}", 0..5),
        ) {
            let name = known_hosts_name(&host, port.unwrap_or(22));
            let mut lines = others.clone();
            lines.insert(others.len() / 2, format!("{name} ssh-ed25519 {key}"));
            let text = lines.join("\n");
            proptest::prop_assert_eq!(
                check_known_hosts(&text, &name, "ssh-ed25519", &key),
                KnownHost::Match
            );
        }
    }
}
