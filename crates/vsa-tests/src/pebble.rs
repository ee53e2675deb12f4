//! Pebble, Let's Encrypt's test CA (Debian's `pebble`), on loopback, with
//! `pebble-challtestsrv` as its DNS: every name resolves to 127.0.0.1, so
//! pebble's HTTP-01 validation reaches the nginx under test on `http_port`.
//!
//! Debian ships no certificate for pebble's own HTTPS listener: the harness
//! makes a CA and a `127.0.0.1` certificate with rcgen; that CA is what
//! vsa's `acme.ca_bundle` trusts. Pebble's issuing root (new at every
//! start) is fetched from its management interface to verify what it issued.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require};

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// PEM of the CA that signed pebble's listener certificate.
    pub ca_bundle: PathBuf,
    /// PEM of pebble's issuing root (what issued certificates chain to).
    pub issuing_root: PathBuf,
    dns_management: u16,
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port`. `None` (test
    /// skipped) when pebble is missing, except under `CI=true`.
    pub fn start(http_port: u16) -> Option<Pebble> {
        let pebble = require("pebble", "to issue certificates (Let's Encrypt's test CA)")?;
        let challtestsrv = require("pebble-challtestsrv", "as pebble's DNS for test domains")?;
        require("curl", "to fetch pebble's issuing root")?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        // The listener's CA and certificate.
        crate::loopback_tls(d, "vsa test: pebble listener CA");

        let (acme, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        std::fs::write(
            d.join("pebble-config.json"),
            format!(
                r#"{{ "pebble": {{
    "listenAddress": "127.0.0.1:{acme}",
    "managementListenAddress": "127.0.0.1:{management}",
    "certificate": "{cert}",
    "privateKey": "{key}",
    "httpPort": {http_port},
    "tlsPort": {tls},
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false }} }}"#,
                cert = d.join("cert.pem").display(),
                key = d.join("key.pem").display(),
                tls = free_port(),
            ),
        )
        .unwrap();
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let mut children = Vec::new();
        // Its own HTTP/TLS challenge servers are off, so they take no port.
        children.push(
            Command::new(challtestsrv)
                .args([
                    "-management",
                    &format!("127.0.0.1:{dns_management}"),
                    "-dns01",
                    &format!("127.0.0.1:{dns}"),
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                ])
                .stdin(Stdio::null())
                .stdout(log("challtestsrv.log"))
                .stderr(log("challtestsrv.err"))
                .spawn()
                .unwrap(),
        );
        children.push(
            Command::new(pebble)
                .args(["-config"])
                .arg(d.join("pebble-config.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns}"), "-strict"])
                // No random sleep before validating, no rejected nonces,
                // no reused authorizations: fast and deterministic.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdin(Stdio::null())
                .stdout(log("pebble.log"))
                .stderr(log("pebble.err"))
                .spawn()
                .unwrap(),
        );
        let mut p = Pebble {
            directory: format!("https://127.0.0.1:{acme}/dir"),
            ca_bundle: d.join("ca.pem"),
            issuing_root: d.join("issuing-root.pem"),
            dns_management,
            children,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if p.curl(&p.directory.clone(), None).is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start: {}",
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let root = p
            .curl(&format!("https://127.0.0.1:{management}/roots/0"), None)
            .expect("pebble's issuing root");
        std::fs::write(&p.issuing_root, root).unwrap();
        // The DNS server answers too.
        while Command::new("curl")
            .args(["-sf", "-o", "/dev/null"])
            .arg(format!(
                "http://127.0.0.1:{}/clear-request-history",
                p.dns_management
            ))
            .args(["-d", "{\"host\":\"x\",\"type\":\"dns\"}"])
            .status()
            .is_ok_and(|s| !s.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        p.children
            .retain_mut(|c| c.try_wait().ok().flatten().is_none());
        assert_eq!(
            p.children.len(),
            2,
            "pebble or its DNS exited: {}",
            p.logs()
        );
        Some(p)
    }

    /// GET (or POST `body`) over HTTPS trusting the listener's CA; the body.
    fn curl(&self, url: &str, body: Option<&str>) -> Option<String> {
        let mut c = Command::new("curl");
        c.args(["-sf", "--cacert"]).arg(&self.ca_bundle).arg(url);
        if let Some(b) = body {
            c.args(["-d", b]);
        }
        let out = c.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Makes DNS lookups of `host` fail (SERVFAIL), so its challenge cannot
    /// succeed.
    pub fn servfail(&self, host: &str) {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "-d"])
            .arg(format!("{{\"host\":\"{host}.\"}}"))
            .arg(format!(
                "http://127.0.0.1:{}/set-servfail",
                self.dns_management
            ))
            .status()
            .unwrap()
            .success();
        assert!(ok, "challtestsrv refused set-servfail");
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "pebble: {}{}\nchalltestsrv: {}{}",
            read("pebble.log"),
            read("pebble.err"),
            read("challtestsrv.log"),
            read("challtestsrv.err")
        )
    }

    /// How much pebble has logged: it logs every request it serves, so an
    /// unchanged length means nobody asked the CA anything.
    pub fn request_log_len(&self) -> u64 {
        ["pebble.log", "pebble.err"]
            .iter()
            .map(|n| std::fs::metadata(self.dir.path().join(n)).map_or(0, |m| m.len()))
            .sum()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
