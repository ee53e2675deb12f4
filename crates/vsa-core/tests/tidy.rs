//! Tidy checks (rust-analyzer style): the Architecture Invariant that
//! `vsa-core` does no I/O, held by what it may depend on and what its
//! source may call. A new dependency or an I/O call fails here, on
//! purpose: the core must stay a function of its inputs.

use std::path::Path;

/// The crates the core may use: parsing, hashing, diffing, templating.
/// None of them touches the filesystem, the network or the clock.
const ALLOWED: &[&str] = &[
    "hmac",
    "schemars",
    "serde",
    "serde-saphyr",
    "serde_json",
    "sha2",
    "similar",
    "tera",
    "thiserror",
];

#[test]
fn the_core_depends_on_no_io_crate() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let mut section = "";
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[dependencies]"
            && let Some((name, _)) = line.split_once('=')
            && !line.starts_with('#')
        {
            deps.push(name.trim().trim_end_matches(".workspace").to_owned());
        }
    }
    assert!(
        !deps.is_empty(),
        "no [dependencies] found in vsa-core's Cargo.toml"
    );
    for d in &deps {
        assert!(
            ALLOWED.contains(&d.as_str()),
            "vsa-core gained the dependency `{d}`: the core does no I/O (ARCHITECTURE.md); \
             put what needs it in vsa-live or vsa-engine, or add it to ALLOWED with a reason"
        );
    }
}

#[test]
fn the_core_calls_no_io() {
    // What would read a file, open a socket, run a program, read the
    // environment or the clock. (Parsing an address is not I/O:
    // `std::net::IpAddr` and friends are allowed.)
    const FORBIDDEN: &[&str] = &[
        "std::fs",
        "std::process",
        "std::env",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "UnixStream",
        "SystemTime::now",
        "Instant::now",
        "File::open",
        "File::create",
    ];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            checked += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for f in FORBIDDEN {
                    assert!(
                        !code.contains(f),
                        "{}:{}: `{f}` in vsa-core, which does no I/O: {line}",
                        path.display(),
                        n + 1
                    );
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} source files found");
}
