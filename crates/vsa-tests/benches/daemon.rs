//! `vsad` against Debian's real nginx and a bare repository on disk
//! (DESIGN §9: push → served ≤ 3 s; resident memory ≤ 30 MiB idle with
//! 1,000 sites).
//!
//! `cargo build --release -p vsad && cargo bench -p vsa-tests --bench
//! daemon`. Measures, on the real vsad binary:
//! - push → served latency with a 1 s poll, and with a signed webhook and a
//!   1 h poll (time from `git push` returning to the first 200 through
//!   nginx for the new site);
//! - resident memory (VmRSS, VmHWM) once converged and idle with 1,000
//!   sites;
//! - CPU time per idle minute with the default 60 s poll and with a 1 s
//!   poll (`VSA_BENCH_IDLE_SECS` shortens the 60 s window);
//! - how long `/healthz` takes to answer, probed every 50 ms, while vsad
//!   converges 1,000 sites from empty (`VSA_BENCH_ONLY=healthz` runs only
//!   that).

use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use vsa_tests::daemon::{Remote, Vsad};
use vsa_tests::host::Host;
use vsa_tests::{Upstream, http_get, http_request, require};

const PUSHES: usize = 5;

fn main() {
    if std::env::var_os("VSA_CHILD_VSAD_CONFIG").is_some() {
        vsa_tests::daemon::child_main();
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(bin) = require("nginx", "to run vsad against a real nginx") else {
        return;
    };
    // Measure the real vsad binary (its allocator, its size), built with
    // `cargo build --release -p vsad`.
    // VSA_BENCH_VSAD: another binary (e.g. a wrapper running it under a
    // profiler).
    let vsad = std::env::var_os("VSA_BENCH_VSAD")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/vsad")
        });
    assert!(
        vsad.is_file(),
        "build it first: cargo build --release -p vsad ({} is missing)",
        vsad.display()
    );
    let idle_secs: u64 = std::env::var("VSA_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let up = Upstream::start("app");

    let only = std::env::var("VSA_BENCH_ONLY").ok();
    if only.as_deref().is_none_or(|o| o == "healthz") {
        let (probes, converge) = healthz_during_converge(&bin, &vsad, &up, 1000);
        println!(
            "vsad /healthz while converging 1,000 sites from empty ({:.1} s, {} probes every 50 ms): {}",
            converge.as_secs_f64(),
            probes.len(),
            summary(probes)
        );
        if only.is_some() {
            return;
        }
    }
    // VSA_BENCH_ONLY=idle skips the latency runs.
    if only.as_deref() != Some("idle") {
        let poll = latency(&bin, &vsad, &up, false);
        let hook = latency(&bin, &vsad, &up, true);
        println!("vsad push → served, real nginx, {PUSHES} pushes each:");
        println!("  1 s poll          {}", summary(poll));
        println!("  webhook, 1 h poll {}", summary(hook));
    }

    for (label, poll) in [("60 s poll", "60s"), ("1 s poll", "1s")] {
        let (rss, hwm, cpu) = idle(&bin, &vsad, &up, 1000, poll, idle_secs);
        let per_minute = cpu * 60.0 / idle_secs as f64 * 1000.0;
        // /proc counts CPU time in 10 ms ticks.
        let cpu = if per_minute == 0.0 {
            format!("< {:.0} ms", 10.0 * 60.0 / idle_secs as f64)
        } else {
            format!("{per_minute:.0} ms")
        };
        println!(
            "vsad idle, 1,000 sites, {label}: VmRSS {:.1} MiB (peak {:.1} MiB), CPU {cpu} per idle minute",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
        );
    }
}

fn served(h: &Host, domain: &str) -> bool {
    http_get(h.http_port, domain, "/", &[]).status == 200
}

/// Push → served, `PUSHES` times, by poll or by webhook.
fn latency(
    bin: &std::path::Path,
    vsad: &std::path::Path,
    up: &Upstream,
    webhook: bool,
) -> Vec<Duration> {
    let mut h = Host::new(bin.to_owned());
    h.start();
    let remote = Remote::new(&h.root);
    remote.site("first.vsa.test", up);
    remote.push("first");
    let secret = "bench-secret";
    std::fs::write(h.root.join("webhook.secret"), secret).unwrap();
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: clone\n  url: {}\n  poll: {}\n  webhook_secret_file: webhook.secret\ndashboard:\n  listen: 127.0.0.1:{port}\n",
        remote.url(),
        if webhook { "1h" } else { "1s" }
    ));
    let mut d = Vsad::start_with(&h, port, &[], Some(vsad));
    let mut out = Vec::new();
    for i in 0..PUSHES {
        let domain = format!("s{i}.vsa.test");
        remote.site(&domain, up);
        remote.push(&domain);
        let pushed = Instant::now();
        if webhook {
            let body = b"{\"ref\":\"refs/heads/main\"}";
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(body);
            let sig: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let r = http_request(
                d.port,
                "POST",
                "localhost",
                "/hooks/git",
                &[("X-Hub-Signature-256", &format!("sha256={sig}"))],
                body,
            );
            assert_eq!(r.status, 202);
        }
        while !served(&h, &domain) {
            assert!(
                pushed.elapsed() < Duration::from_secs(30),
                "{domain} never served"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        out.push(pushed.elapsed());
        // Spread the pushes over the poll phase.
        std::thread::sleep(Duration::from_millis(330));
    }
    let _ = d.terminate();
    out
}

/// Converges 1,000 sites, then watches the idle daemon: (VmRSS KiB, VmHWM
/// KiB, CPU seconds over `secs`).
fn idle(
    bin: &std::path::Path,
    vsad: &std::path::Path,
    up: &Upstream,
    n: usize,
    poll: &str,
    secs: u64,
) -> (u64, u64, f64) {
    let mut h = Host::new(bin.to_owned());
    h.start();
    let remote = Remote::new(&h.root);
    for i in 0..n {
        remote.site(&format!("site{i}.vsa.test"), up);
    }
    remote.push("sites");
    let port = 0;
    h.configure(&format!(
        "repo:\n  path: clone\n  url: {}\n  poll: {poll}\ndashboard:\n  listen: 127.0.0.1:{port}\n",
        remote.url()
    ));
    let mut d = Vsad::start_with(&h, port, &[], Some(vsad));
    d.wait("in sync", Duration::from_secs(60), |d| {
        d.status().is_some_and(|s| s["in_sync"] == true)
    });
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_secs(d.pid());
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = cpu_secs(d.pid()) - cpu0;
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let (rss, hwm) = (field("VmRSS:"), field("VmHWM:"));
    // Where it is: heap and stacks (anonymous) versus mapped files (the
    // binary's own pages, libraries).
    let smaps =
        std::fs::read_to_string(format!("/proc/{}/smaps_rollup", d.pid())).unwrap_or_default();
    let kb = |name: &str| -> u64 {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    eprintln!(
        "  ({poll} poll) RssAnon {:.1} MiB, RssFile {:.1} MiB; threads {}",
        kb("Anonymous:") as f64 / 1024.0,
        (kb("Rss:") - kb("Anonymous:")) as f64 / 1024.0,
        field("Threads:")
    );
    // VSA_BENCH_SMAPS=DIR keeps the whole smaps, mapping by mapping.
    if let Some(dir) = std::env::var_os("VSA_BENCH_SMAPS") {
        let full = std::fs::read_to_string(format!("/proc/{}/smaps", d.pid())).unwrap_or_default();
        let file = std::path::Path::new(&dir).join(format!("smaps-{}.txt", poll));
        std::fs::write(&file, full).unwrap();
        eprintln!("  smaps kept in {}", file.display());
    }
    let _ = d.terminate();
    (rss, hwm, cpu)
}

/// `/healthz`'s answer time, probed every 50 ms from vsad's start until
/// it has converged `n` sites from empty; and how long converging took.
fn healthz_during_converge(
    bin: &std::path::Path,
    vsad: &std::path::Path,
    up: &Upstream,
    n: usize,
) -> (Vec<Duration>, Duration) {
    let mut h = Host::new(bin.to_owned());
    h.start();
    let remote = Remote::new(&h.root);
    for i in 0..n {
        remote.site(&format!("site{i}.vsa.test"), up);
    }
    remote.push("sites");
    h.configure(&format!(
        "repo:\n  path: clone\n  url: {}\n  poll: 60s\ndashboard:\n  listen: 127.0.0.1:0\n",
        remote.url()
    ));
    let started = Instant::now();
    let d = Vsad::spawn_with(&h, 0, &[], Some(vsad));
    let mut probes = Vec::new();
    loop {
        let t = Instant::now();
        let r = http_get(d.port, "localhost", "/healthz", &[]);
        probes.push(t.elapsed());
        assert_eq!(r.status, 200, "{r:?}");
        // The status read is not timed: only /healthz is the probe.
        if d.status().is_some_and(|s| s["in_sync"] == true) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not converged in 2 min:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
    }
    (probes, started.elapsed())
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ
}

fn summary(mut d: Vec<Duration>) -> String {
    d.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = d[(d.len() * 99 / 100).min(d.len() - 1)];
    format!(
        "median {:6.1} ms  min {:6.1} ms  p99 {:6.1} ms  max {:6.1} ms",
        ms(d[d.len() / 2]),
        ms(d[0]),
        ms(p99),
        ms(d[d.len() - 1])
    )
}
