//! Syntax rules for the strings that end up inside NGINX or Docker config.
//!
//! Architecture Invariant: every string a manifest contributes to a rendered
//! vhost passes one of these checks first. They are allow-lists, so nothing
//! that could start a new nginx directive (`;`, braces, quotes, whitespace,
//! `$`, `#`, newlines) can get through.

/// Why a string was refused; the caller adds the field name and position.
pub type Verdict = Result<(), String>;

/// A DNS name as vsa serves it: lower case, at least two labels, no wildcard.
pub fn dns_name(name: &str) -> Verdict {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = forbidden_char(name) {
        return Err(format!("contains {c}, which is not allowed in a DNS name"));
    }
    if name.starts_with("*.") {
        return Err(
            "is a wildcard; wildcard names need DNS-01 validation, which vsa does not do".into(),
        );
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "must be lower case (`{}`)",
            name.to_ascii_lowercase()
        ));
    }
    if name.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err("must have at least two labels (e.g. `example.com`)".into());
    }
    for label in &labels {
        if label.is_empty() {
            return Err("has an empty label (`..` or a leading/trailing dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("has a label longer than 63 characters (`{label}`)"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "label `{label}` may only hold a-z, 0-9 and `-` (use punycode for international names)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` must not start or end with `-`"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("ends in a numeric label; an IP address is not a domain".into());
    }
    Ok(())
}

/// Names a character in a way that survives being printed: whitespace and
/// control characters are invisible otherwise.
fn describe(c: char) -> String {
    match c {
        '\n' => "a newline".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        ' ' => "a space".into(),
        c if c.is_control() || c.is_whitespace() => format!("U+{:04X}", c as u32),
        c => format!("`{c}`"),
    }
}

/// The characters that would let text escape its place in an nginx config.
fn forbidden_char(s: &str) -> Option<String> {
    s.chars()
        .find(|&c| {
            matches!(c, ';' | '{' | '}' | '"' | '\'' | '`' | '$' | '#' | '\\')
                || c.is_whitespace()
                || c.is_control()
        })
        .map(describe)
}

/// A container name (`<stack>-<service>`) as Docker accepts it.
pub fn container_name(name: &str) -> Verdict {
    if let Some(c) = forbidden_char(name) {
        return Err(format!("contains {c}"));
    }
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return Err("is empty".into()),
        Some(b) if !b.is_ascii_alphanumeric() => {
            return Err("must start with a letter or digit".into());
        }
        _ => {}
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err("may only hold letters, digits, `_`, `.` and `-`".into());
    }
    if name.len() > 128 {
        return Err("is longer than 128 characters".into());
    }
    Ok(())
}

/// A stack, service or host id: lower-case letters, digits, `-` and `_`.
pub fn identifier(name: &str) -> Verdict {
    if let Some(c) = forbidden_char(name) {
        return Err(format!("contains {c}"));
    }
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return Err("is empty".into()),
        Some(b) if !(b.is_ascii_lowercase() || b.is_ascii_digit()) => {
            return Err("must start with a lower-case letter or digit".into());
        }
        _ => {}
    }
    if !bytes
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only hold a-z, 0-9, `-`, `_` and `.`".into());
    }
    if name.len() > 63 {
        return Err("is longer than 63 characters".into());
    }
    Ok(())
}

/// A TCP port number.
pub fn port(p: i64) -> Verdict {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("{p} is not a port (1-65535)"))
    }
}

/// The parts of an upstream URL that the vhost uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

/// `http[s]://host[:port][/path]`, with nothing nginx could misread.
pub fn upstream_url(url: &str) -> Result<UpstreamUrl, String> {
    if let Some(c) = forbidden_char(url) {
        return Err(format!("contains {c}"));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "scheme `{scheme}` is not supported, use http or https"
        ));
    }
    if rest.contains('@') {
        return Err("must not carry credentials (`user@`)".into());
    }
    if rest.contains('?') || rest.contains('&') {
        return Err("must not carry a query string".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let (h, after) = stripped
            .split_once(']')
            .ok_or_else(|| "has an unclosed `[` in the host".to_string())?;
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!("`[{h}]` is not an IPv6 address"));
        }
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("has junk after the IPv6 address".into()),
        };
        (format!("[{h}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !host.starts_with('[') {
        let is_ipv4 = host.parse::<std::net::Ipv4Addr>().is_ok();
        let simple = host.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        });
        if !is_ipv4
            && (!simple
                || host.starts_with('-')
                || host.starts_with('.')
                || host.ends_with('.')
                || host.contains(".."))
        {
            return Err(format!(
                "host `{host}` is not a lower-case host name or an IPv4 address"
            ));
        }
    }
    let port = match port {
        None => None,
        Some(p) => {
            let n: i64 = p
                .parse()
                .map_err(|_| format!("port `{p}` is not a number"))?;
            self::port(n)?;
            Some(n as u16)
        }
    };
    if !path.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'/' | b'.' | b'_' | b'~' | b'-' | b'%' | b'+' | b'=' | b','
            )
    }) {
        return Err("path may only hold letters, digits and `/._~-%+=,`".into());
    }
    Ok(UpstreamUrl {
        scheme: scheme.to_owned(),
        host,
        port,
        path: path.to_owned(),
    })
}

/// A basic-auth realm; it is written inside double quotes, so a plain space
/// is harmless there, but nothing that could end the quotes is allowed.
pub fn realm(s: &str) -> Verdict {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    match s.chars().find(|&c| {
        !(c.is_ascii_alphanumeric()
            || matches!(c, ' ' | '.' | '_' | '-' | ':' | '/' | '(' | ')' | ','))
    }) {
        Some(c) => Err(format!(
            "contains {}; a realm may hold letters, digits, spaces and `._-:/(),`",
            describe(c)
        )),
        None => Ok(()),
    }
}

/// A Content-Security-Policy value, written inside double quotes: `;` and
/// `'` are part of CSP syntax and harmless there; quotes, `$` and escapes
/// are not.
pub fn csp(s: &str) -> Verdict {
    if s.is_empty() || s.len() > 2048 {
        return Err("must be 1 to 2048 characters".into());
    }
    match s.chars().find(|&c| {
        matches!(c, '"' | '\\' | '$' | '{' | '}' | '#' | '`')
            || (c.is_whitespace() && c != ' ')
            || c.is_control()
    }) {
        Some(c) => Err(format!("contains {}", describe(c))),
        None => Ok(()),
    }
}

/// An htpasswd user name.
pub fn user_name(s: &str) -> Verdict {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    match s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        Some(c) => Err(format!(
            "contains {}; a user name may hold letters, digits and `._-@`",
            describe(c)
        )),
        None => Ok(()),
    }
}

/// A bcrypt hash in modular crypt format: `$2b$12$` + 53 characters.
pub fn bcrypt_hash(s: &str) -> Verdict {
    const HELP: &str = "is not a bcrypt hash (`$2b$<cost>$` and 53 more characters); make one with `vsactl hash-password`";
    let mut parts = s.splitn(4, '$');
    let (Some(""), Some(variant), Some(cost), Some(rest)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HELP.into());
    };
    if !matches!(variant, "2a" | "2b" | "2y") {
        return Err(HELP.into());
    }
    // The cost is exactly two decimal digits (`$2b$04$` to `$2b$31$`).
    if cost.len() != 2 || !cost.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HELP.into());
    }
    let Ok(cost) = cost.parse::<u32>() else {
        return Err(HELP.into());
    };
    if !(4..=31).contains(&cost) {
        return Err(format!("has bcrypt cost {cost}, outside 4-31"));
    }
    if rest.len() != 53
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    {
        return Err(HELP.into());
    }
    Ok(())
}

/// An nginx size such as `50m`, `512k` or `1g`.
pub fn size(s: &str) -> Verdict {
    let digits = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    if digits.is_empty()
        || s.len() - digits.len() > 1
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.len() > 9
    {
        return Err(format!(
            "`{}` is not a size such as `50m`, `512k` or `1g`",
            s.escape_debug()
        ));
    }
    let unit: u64 = match s.as_bytes()[s.len() - 1] {
        b'k' | b'K' => 1 << 10,
        b'm' | b'M' => 1 << 20,
        b'g' | b'G' => 1 << 30,
        _ => 1,
    };
    let bytes = digits
        .parse::<u64>()
        .unwrap_or(u64::MAX)
        .saturating_mul(unit);
    if bytes == 0 {
        return Err(
            "is no limit at all (nginx reads 0 as unlimited); give a size such as `50m`".into(),
        );
    }
    if bytes > MAX_SIZE {
        return Err(format!(
            "is over {}g, more than any request through a proxy should carry",
            MAX_SIZE >> 30
        ));
    }
    Ok(())
}

/// The largest `max_body` vsa accepts.
pub const MAX_SIZE: u64 = 10 << 30;

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn env_name(s: &str) -> Verdict {
    let mut b = s.bytes();
    let first_ok = b
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_');
    if first_ok && b.all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        Ok(())
    } else {
        Err(format!("`{}` is not a variable name", s.escape_debug()))
    }
}

/// A Docker image reference: `[registry[:port]/]name[:tag][@sha256:digest]`.
pub fn image_ref(s: &str) -> Verdict {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = forbidden_char(s) {
        return Err(format!("contains {c}"));
    }
    if s.len() > 255 {
        return Err("is longer than 255 characters".into());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let ok = d.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !ok {
            return Err(format!(
                "digest `{d}` is not `sha256:` and 64 lower-case hex digits"
            ));
        }
    }
    // A tag is after the last `:` that follows the last `/`.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(format!(
                "tag `{t}` is not valid (letters, digits, `_.-`, at most 128)"
            ));
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let (host, port) = match first.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (first, None),
            };
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
            if !host_ok || !port_ok {
                return Err(format!("registry `{first}` is not a host[:port]"));
            }
            components.remove(0);
        }
    }
    for c in components {
        if !path_component(c) {
            return Err(format!(
                "name component `{c}` must be lower-case letters and digits, separated by `.`, `_`, `__` or `-`"
            ));
        }
    }
    Ok(())
}

fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    if b.iter().any(|x| x.is_ascii_uppercase()) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or one or more `-`.
        let start = i;
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A Compose duration such as `30s`, `1m30s`, `500ms`.
pub fn duration(s: &str) -> Verdict {
    parse_duration(s).map(|_| ())
}

/// Parses `1h2m3s`, `500ms`, `60s` (and a bare number of seconds) into milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let err = || {
        format!(
            "`{}` is not a duration such as `30s`, `5m` or `1h30m`",
            s.escape_debug()
        )
    };
    if s.is_empty() {
        return Err(err());
    }
    if let Ok(n) = s.parse::<u64>() {
        return n.checked_mul(1000).ok_or_else(err);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "nginx",
            "nginx:1.27",
            "ghcr.io/acme/shop:1.4.2",
            "localhost:5000/a/b",
            "registry.example.com:443/team/app_x__y-z:v1.0-rc1",
            "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(image_ref(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "a//b",
            "nginx:bad tag",
            "x@sha256:12",
            "-a",
            "a..b",
            "nginx;rm",
        ] {
            assert!(image_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("60"), Ok(60_000));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn bcrypt_hashes() {
        let good = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
        assert_eq!(bcrypt_hash(good), Ok(()));
        assert!(
            bcrypt_hash("$2b$03$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW").is_err()
        );
        assert!(bcrypt_hash("$1$abc").is_err());
        assert!(
            bcrypt_hash("$2b$012$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW").is_err()
        );
        assert!(bcrypt_hash("secret").is_err());
        assert!(bcrypt_hash(&good.replace('R', ";")).is_err());
    }
}
