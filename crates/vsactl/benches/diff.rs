//! `vsactl diff` on a host already in sync, for 1,000 and 10,000 sites
//! (DESIGN §9: ≤ 150 ms for 1,000 and ≤ 3× just reading the files; linear).
//!
//! `cargo bench -p vsactl --bench diff`. Each run generates a repository and
//! a converged host in a temporary directory, then measures the whole path
//! `diff` takes (read + validate + observe + render + plan), next to a
//! baseline that only reads the same files.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use vsa_core::config::{Config, ConfigSource};
use vsa_core::plan::ResourceKind;

const HASH: &str = "$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

struct Fixture {
    _dir: tempfile::TempDir,
    repo: std::path::PathBuf,
    config: Config,
}

/// A repository of `n` sites (a mix of container and URL upstreams, a tenth
/// with auth, some with aliases) and a host converged to it.
fn fixture(n: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("sites")).unwrap();
    std::fs::write(
        repo.join("fleet.yaml"),
        "apiVersion: vsa/v1\nkind: Fleet\nhosts:\n  - id: vps-01\ndefaults:\n  rate_limit: { rps: 20 }\n",
    )
    .unwrap();
    for i in 0..n {
        let upstream = if i % 2 == 0 {
            format!("upstream: {{ container: app{i}-web, port: 8080 }}\n")
        } else {
            format!(
                "upstream: {{ url: \"http://127.0.0.1:{}\" }}\n",
                10_000 + i % 50_000
            )
        };
        let mut s = format!(
            "apiVersion: vsa/v1\nkind: Site\ndomain: site{i}.example.com\nhost: vps-01\ntls: none\n{upstream}"
        );
        if i % 3 == 0 {
            s.push_str(&format!("aliases: [www.site{i}.example.com]\n"));
        }
        if i % 10 == 0 {
            s.push_str(&format!(
                "auth:\n  users:\n    - name: admin\n      bcrypt: \"{HASH}\"\n"
            ));
        }
        if i % 4 == 0 {
            s.push_str("websockets: true\nmax_body: 50m\n");
        }
        std::fs::write(
            repo.join("sites").join(format!("site{i}.example.com.yaml")),
            s,
        )
        .unwrap();
    }
    let config = Config::parse(&ConfigSource {
        file: "bench.yaml",
        text: Some("host: vps-01\n"),
        base_dir: &root,
        root: &root,
    })
    .unwrap();
    // Converge: write what the plan says, as apply would.
    let hp = vsactl::pipeline::plan_host(&config, &repo, "vps-01").unwrap();
    for c in &hp.plan.changes {
        let dir = match c.kind {
            ResourceKind::Vhost => &config.paths.vhosts,
            ResourceKind::Htpasswd => &config.paths.htpasswd,
            ResourceKind::AccessLog => &config.paths.access_logs,
            _ => unreachable!(),
        };
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join(c.file.as_ref().unwrap()),
            c.content().unwrap_or(""),
        )
        .unwrap();
    }
    let again = vsactl::pipeline::plan_host(&config, &repo, "vps-01").unwrap();
    assert!(again.plan.in_sync(), "the fixture host must be in sync");
    Fixture {
        _dir: dir,
        repo,
        config,
    }
}

/// The floor: reading every file `diff` has to read, and nothing else.
fn read_everything(repo: &Path, config: &Config) -> usize {
    let mut bytes = 0;
    for dir in [
        repo.join("sites"),
        config.paths.vhosts.clone(),
        config.paths.htpasswd.clone(),
    ] {
        for e in std::fs::read_dir(dir).unwrap() {
            bytes += std::fs::read(e.unwrap().path()).unwrap().len();
        }
    }
    for e in std::fs::read_dir(&config.paths.access_logs).unwrap() {
        bytes += e.unwrap().file_name().len();
    }
    bytes
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("diff_in_sync");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for n in [1_000usize, 10_000] {
        let f = fixture(n);
        g.bench_with_input(BenchmarkId::new("vsactl_diff", n), &f, |b, f| {
            b.iter(|| {
                let hp = vsactl::pipeline::plan_host(&f.config, &f.repo, "vps-01").unwrap();
                assert!(hp.plan.in_sync());
                black_box(hp)
            })
        });
        g.bench_with_input(BenchmarkId::new("read_files_only", n), &f, |b, f| {
            b.iter(|| black_box(read_everything(&f.repo, &f.config)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
