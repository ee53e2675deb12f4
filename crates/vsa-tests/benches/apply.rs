//! `vsactl apply` over 1,000 sites against Debian's real nginx on loopback
//! (DESIGN §9: a no-op reconcile makes zero writes and zero reloads; one
//! reload per pass however many sites changed).
//!
//! `cargo bench -p vsa-tests --bench apply` (`VSA_BENCH_SITES=N` for
//! another size). Each round builds a fresh host, then times, as a user
//! runs it (a process of its own: start, lock, load, plan, write, audit):
//! - the first apply, from an empty host, of every site;
//! - no-op applies on the converged host, each checked to write nothing
//!   (every file's inode, mtime and content unchanged), reload nothing and
//!   audit nothing;
//! - `nginx -t` on the converged config alone, the floor of any apply that
//!   changes something.

use std::process::Command;
use std::time::{Duration, Instant};

use vsa_tests::host::Host;
use vsa_tests::{Upstream, http_get_until, require};

const HASH: &str = "$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
const ROUNDS: usize = 3;
const NOOPS_PER_ROUND: usize = 5;

fn main() {
    if std::env::var_os("VSA_CHILD_ARGS").is_some() {
        vsa_tests::host::child_main();
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` would not.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(bin) = require("nginx", "to apply against a real nginx") else {
        return;
    };
    let n: usize = std::env::var("VSA_BENCH_SITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let up = Upstream::start("app");

    let (mut first, mut noop, mut test) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_effects = (0, 0);
    for _ in 0..ROUNDS {
        let mut h = Host::new(bin.clone());
        for i in 0..n {
            let mut body = format!("upstream: {{ url: \"http://127.0.0.1:{}\" }}\n", up.port);
            if i % 3 == 0 {
                body.push_str(&format!("aliases: [www.site{i}.vsa.test]\n"));
            }
            if i % 10 == 0 {
                body.push_str(&format!(
                    "auth:\n  users:\n    - name: admin\n      bcrypt: \"{HASH}\"\n"
                ));
            }
            if i % 4 == 0 {
                body.push_str("websockets: true\nmax_body: 50m\n");
            }
            h.site(&format!("site{i}.vsa.test"), &body);
        }
        h.start();

        let t = Instant::now();
        let out = h.vsactl_child(&["apply", "--yes"], &[]);
        first.push(t.elapsed());
        assert!(
            out.status.success(),
            "first apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events = h.audit_lines();
        let reloads = events
            .iter()
            .filter(|e| e["action"] == "nginx.reload")
            .count();
        first_effects = (events.len() - reloads, reloads);
        assert_eq!(reloads, 1, "one reload for the whole pass");
        let last = format!("site{}.vsa.test", n - 1);
        assert_eq!(
            http_get_until(h.http_port, &last, "/", &[], |r| r.status == 200).status,
            200
        );

        let files = h.files();
        let events = events.len();
        for _ in 0..NOOPS_PER_ROUND {
            let t = Instant::now();
            let out = h.vsactl_child(&["apply", "--yes"], &[]);
            noop.push(t.elapsed());
            assert!(out.status.success());
            assert!(h.files() == files, "a no-op apply wrote a file");
            assert_eq!(h.audit_lines().len(), events, "a no-op apply audited");
        }

        let argv = h.nginx.test_argv();
        let t = Instant::now();
        let ok = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        test.push(t.elapsed());
        assert!(ok.status.success());
    }

    println!("vsactl apply, {n} sites, real nginx ({ROUNDS} rounds):");
    println!(
        "  first apply      {}  ({} writes audited, {} reload)",
        summary(&mut first),
        first_effects.0,
        first_effects.1
    );
    println!(
        "  no-op apply      {}  (0 writes, 0 reloads, 0 events; {} runs)",
        summary(&mut noop),
        noop.len()
    );
    println!("  nginx -t alone   {}", summary(&mut test));
}

fn summary(d: &mut [Duration]) -> String {
    d.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:7.1} ms  min {:7.1} ms  max {:7.1} ms",
        ms(d[d.len() / 2]),
        ms(d[0]),
        ms(d[d.len() - 1])
    )
}
