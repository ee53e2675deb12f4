//! The host agent configuration of DESIGN §4, shared by `vsad` and `vsactl`.
//!
//! Parsing is pure: the caller reads the file and the environment and passes
//! them in. Every path has a default under the sandbox root (`$VSA_ROOT`,
//! default `/`), and relative paths in the file are taken relative to the
//! file's own directory, so a whole host can live in one folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names;
use crate::problem::Problem;
use crate::span::{Pos, Sp};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The fleet host this agent converges.
    pub host: Option<String>,
    pub repo: RepoConfig,
    pub paths: Paths,
    pub nginx: NginxConfig,
    pub docker: DockerConfig,
    pub acme: AcmeConfig,
    pub mode: Mode,
    pub dashboard: DashboardConfig,
    pub hub: Option<HubConfig>,
    pub role: Role,
    pub hub_server: HubServerConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RepoConfig {
    pub path: PathBuf,
    pub url: Option<String>,
    pub branch: String,
    pub poll_ms: u64,
    pub webhook_secret_file: Option<PathBuf>,
    /// HTTPS remotes: a file holding the access token (extension).
    pub token_file: Option<PathBuf>,
    /// SSH remotes: a private key file without passphrase (extension).
    pub ssh_key_file: Option<PathBuf>,
    /// SSH remotes: the `known_hosts` file the server's host key must be
    /// in; without it, `~/.ssh/known_hosts` (extension).
    pub known_hosts_file: Option<PathBuf>,
    /// How long connecting to the remote, or waiting for it to answer, may
    /// take before a fetch gives up (extension; `repo.timeout`, 30 s).
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Paths {
    pub vhosts: PathBuf,
    pub htpasswd: PathBuf,
    pub letsencrypt: PathBuf,
    pub webroot: PathBuf,
    pub access_logs: PathBuf,
    pub state: PathBuf,
    pub audit_log: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NginxConfig {
    pub test: Vec<String>,
    pub reload: Vec<String>,
    pub container: Option<String>,
    pub group: String,
    pub http_port: u16,
    pub https_port: u16,
    /// Where nginx sees the directories (differs when it runs in a container).
    pub paths: NginxPaths,
    /// DNS resolver for container upstreams (Docker's embedded DNS by default).
    pub resolver: String,
    /// Also listen on IPv6 (`[::]:port`).
    pub ipv6: bool,
    /// The port of vsa's probe server in the http-context file: after a
    /// reload, vsa reads the configuration's generation back from it, on
    /// 127.0.0.1 (or, with `container`, at the container's address).
    pub probe_port: u16,
    /// nginx's error log on the host, where a reload that did not take
    /// effect says why (with `container`, the container's log is read).
    pub error_log: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NginxPaths {
    pub htpasswd: PathBuf,
    pub letsencrypt: PathBuf,
    pub webroot: PathBuf,
    pub access_logs: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DockerConfig {
    pub endpoint: Option<String>,
    pub network: String,
}

/// The loopback port of vsa's probe server when `nginx.probe_port` is not set.
pub const DEFAULT_PROBE_PORT: u16 = 8087;

/// Where the Docker engine listens when `docker.endpoint` is not set.
pub const DEFAULT_DOCKER_ENDPOINT: &str = "unix:///var/run/docker.sock";

impl DockerConfig {
    /// `docker.endpoint`, or the default socket.
    pub fn endpoint_url(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(DEFAULT_DOCKER_ENDPOINT)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AcmeConfig {
    pub directory: String,
    pub ca_bundle: Option<PathBuf>,
    pub renew_before_days: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Apply,
    Report,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Hub,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DashboardConfig {
    pub listen: String,
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HubConfig {
    pub url: String,
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HubServerConfig {
    pub database: Option<String>,
    pub admin_token_file: Option<PathBuf>,
}

// The file as written: every field optional, unknown fields refused.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: Option<Sp<String>>,
    #[serde(default)]
    repo: RawRepo,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    nginx: RawNginx,
    #[serde(default)]
    docker: RawDocker,
    #[serde(default)]
    acme: RawAcme,
    mode: Option<Mode>,
    #[serde(default)]
    dashboard: RawDashboard,
    hub: Option<RawHub>,
    role: Option<Role>,
    #[serde(default)]
    hub_server: RawHubServer,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    path: Option<String>,
    url: Option<Sp<String>>,
    branch: Option<String>,
    poll: Option<Sp<String>>,
    webhook_secret_file: Option<String>,
    token_file: Option<Sp<String>>,
    ssh_key_file: Option<String>,
    known_hosts_file: Option<String>,
    timeout: Option<Sp<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    vhosts: Option<String>,
    htpasswd: Option<String>,
    letsencrypt: Option<String>,
    webroot: Option<String>,
    access_logs: Option<String>,
    state: Option<String>,
    audit_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNginx {
    test: Option<Sp<Vec<String>>>,
    reload: Option<Sp<Vec<String>>>,
    container: Option<String>,
    group: Option<String>,
    http_port: Option<Sp<u16>>,
    https_port: Option<Sp<u16>>,
    #[serde(default)]
    paths: RawNginxPaths,
    resolver: Option<Sp<String>>,
    ipv6: Option<bool>,
    probe_port: Option<Sp<u16>>,
    error_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNginxPaths {
    htpasswd: Option<Sp<String>>,
    letsencrypt: Option<Sp<String>>,
    webroot: Option<Sp<String>>,
    access_logs: Option<Sp<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    endpoint: Option<String>,
    network: Option<Sp<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Option<String>,
    ca_bundle: Option<String>,
    renew_before_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDashboard {
    listen: Option<Sp<String>>,
    token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    url: String,
    token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHubServer {
    database: Option<String>,
    admin_token_file: Option<String>,
}

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Where the configuration is read from and relative to what.
#[derive(Clone, Debug)]
pub struct ConfigSource<'a> {
    /// For messages: the file's path as the user named it.
    pub file: &'a str,
    /// The file's text; `None` when no file exists and defaults apply.
    pub text: Option<&'a str>,
    /// Relative paths in the file are resolved against this directory.
    pub base_dir: &'a Path,
    /// `$VSA_ROOT`: every default path lives under it.
    pub root: &'a Path,
}

impl Config {
    /// The built-in defaults for a sandbox root.
    pub fn defaults(root: &Path) -> Config {
        let src = ConfigSource {
            file: "<defaults>",
            text: None,
            base_dir: root,
            root,
        };
        Config::parse(&src).unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// Parses a configuration file; every problem comes back with its line.
    pub fn parse(src: &ConfigSource<'_>) -> Result<Config, Vec<Problem>> {
        let raw: RawConfig = match src.text {
            None => RawConfig::default(),
            Some(text) => {
                let opts = serde_saphyr::options! {
                    budget: serde_saphyr::budget! { max_depth: 16, max_aliases: 100, max_events: 100_000 },
                    strict_booleans: true,
                    with_snippet: false,
                };
                match serde_saphyr::from_str_with_options::<Option<RawConfig>>(text, opts) {
                    Ok(r) => r.unwrap_or_default(),
                    Err(e) => {
                        let pos = e.location().map(Pos::from).unwrap_or(Pos::new(1, 1));
                        let msg = crate::load::yaml_message(&e);
                        return Err(vec![Problem::error(src.file, pos, msg)]);
                    }
                }
            }
        };
        let mut problems = Vec::new();
        // Each problem at the value it is about (the file's start when the
        // value is a default).
        let mut bad = |pos: Pos, msg: String| problems.push(Problem::error(src.file, pos, msg));
        let at = |v: Option<Pos>| v.unwrap_or(Pos::new(1, 1));

        let under = |p: &str| -> PathBuf { normalize(&src.root.join(p.trim_start_matches('/'))) };
        let given = |p: &Option<String>, default: &str| -> PathBuf {
            match p {
                Some(p) => normalize(&src.base_dir.join(p)),
                None => under(default),
            }
        };
        let opt_path = |p: &Option<String>| p.as_ref().map(|p| normalize(&src.base_dir.join(p)));

        if let Some(h) = &raw.host
            && let Err(e) = names::identifier(h)
        {
            bad(h.pos, format!("host `{}` {e}", h.value));
        }
        // A duration of at least a second, else `default` and a problem.
        let mut duration = |key: &str, value: &Option<Sp<String>>, default: u64| match value {
            None => default,
            Some(v) => match names::parse_duration(v) {
                Ok(ms) if ms >= 1000 => ms,
                Ok(_) => {
                    bad(v.pos, format!("{key} `{}` is shorter than 1s", v.value));
                    default
                }
                Err(e) => {
                    bad(v.pos, format!("{key}: {e}"));
                    default
                }
            },
        };
        let poll_ms = duration("repo.poll", &raw.repo.poll, 60_000);
        let timeout_ms = duration("repo.timeout", &raw.repo.timeout, 30_000);
        if let Some(token_file) = &raw.repo.token_file
            && let Some(url) = &raw.repo.url
            && !url.to_ascii_lowercase().starts_with("https://")
        {
            bad(token_file.pos, "repo.token_file is sent only over https://, and repo.url is not an https:// URL (the token would travel in clear, or go nowhere)".to_owned());
        }
        let paths = Paths {
            vhosts: given(&raw.paths.vhosts, "/etc/nginx/conf.d"),
            htpasswd: given(&raw.paths.htpasswd, "/etc/nginx/htpasswd"),
            letsencrypt: given(&raw.paths.letsencrypt, "/etc/letsencrypt"),
            webroot: given(&raw.paths.webroot, "/var/www/acme"),
            access_logs: given(&raw.paths.access_logs, "/var/log/nginx/domains"),
            state: given(&raw.paths.state, "/var/lib/vsa"),
            audit_log: given(&raw.paths.audit_log, "/var/log/vsa/audit.jsonl"),
        };
        let nginx = nginx_config(
            &raw.nginx,
            &paths,
            given(&raw.nginx.error_log, "/var/log/nginx/error.log"),
            &mut bad,
        );
        let renew_before_days = raw.acme.renew_before_days.unwrap_or(30);
        let listen = raw
            .dashboard
            .listen
            .as_ref()
            .map_or_else(|| "127.0.0.1:8088".into(), |l| l.value.clone());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                at(raw.dashboard.listen.as_ref().map(|l| l.pos)),
                format!("dashboard.listen `{listen}` is not an address such as 127.0.0.1:8088"),
            );
        }
        let network = raw
            .docker
            .network
            .as_ref()
            .map_or_else(|| "flowbiz_ext".into(), |n| n.value.clone());
        if let Err(e) = names::container_name(&network) {
            bad(
                at(raw.docker.network.as_ref().map(|n| n.pos)),
                format!("docker.network `{network}` {e}"),
            );
        }

        let config = Config {
            host: raw.host.as_ref().map(|h| h.value.clone()),
            repo: RepoConfig {
                path: given(&raw.repo.path, "/srv/vsa/desired-state"),
                url: raw.repo.url.as_ref().map(|u| u.value.clone()),
                branch: raw.repo.branch.clone().unwrap_or_else(|| "main".into()),
                poll_ms,
                webhook_secret_file: opt_path(&raw.repo.webhook_secret_file),
                token_file: raw
                    .repo
                    .token_file
                    .as_ref()
                    .map(|p| normalize(&src.base_dir.join(&p.value))),
                ssh_key_file: opt_path(&raw.repo.ssh_key_file),
                known_hosts_file: opt_path(&raw.repo.known_hosts_file),
                timeout_ms,
            },
            nginx,
            paths,
            docker: DockerConfig {
                endpoint: raw
                    .docker
                    .endpoint
                    .clone()
                    .or_else(|| Some(DEFAULT_DOCKER_ENDPOINT.into())),
                network,
            },
            acme: AcmeConfig {
                directory: raw
                    .acme
                    .directory
                    .clone()
                    .unwrap_or_else(|| LETS_ENCRYPT.into()),
                ca_bundle: opt_path(&raw.acme.ca_bundle),
                renew_before_days,
            },
            mode: raw.mode.unwrap_or(Mode::Apply),
            dashboard: DashboardConfig {
                listen,
                token_file: opt_path(&raw.dashboard.token_file),
            },
            hub: raw.hub.as_ref().map(|h| HubConfig {
                url: h.url.clone(),
                token_file: opt_path(&h.token_file),
            }),
            role: raw.role.unwrap_or(Role::Agent),
            hub_server: HubServerConfig {
                database: raw.hub_server.database.clone(),
                admin_token_file: opt_path(&raw.hub_server.admin_token_file),
            },
        };
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }
}

/// The `nginx:` part: the paths nginx sees, its ports, resolver and
/// commands, each checked where it is written.
fn nginx_config(
    raw: &RawNginx,
    paths: &Paths,
    error_log: PathBuf,
    bad: &mut dyn FnMut(Pos, String),
) -> NginxConfig {
    let at = |v: Option<Pos>| v.unwrap_or(Pos::new(1, 1));
    // Inside a container nginx sees its own paths; on the host, the same ones.
    let nginx_view = |p: &Option<Sp<String>>, host: &PathBuf| -> PathBuf {
        match p {
            Some(p) => PathBuf::from(&p.value),
            None => host.clone(),
        }
    };
    let nginx_paths = NginxPaths {
        htpasswd: nginx_view(&raw.paths.htpasswd, &paths.htpasswd),
        letsencrypt: nginx_view(&raw.paths.letsencrypt, &paths.letsencrypt),
        webroot: nginx_view(&raw.paths.webroot, &paths.webroot),
        access_logs: nginx_view(&raw.paths.access_logs, &paths.access_logs),
    };
    let rp = &raw.paths;
    for (what, p, written) in [
        ("nginx.paths.htpasswd", &nginx_paths.htpasswd, &rp.htpasswd),
        (
            "nginx.paths.letsencrypt",
            &nginx_paths.letsencrypt,
            &rp.letsencrypt,
        ),
        ("nginx.paths.webroot", &nginx_paths.webroot, &rp.webroot),
        (
            "nginx.paths.access_logs",
            &nginx_paths.access_logs,
            &rp.access_logs,
        ),
    ] {
        // These are written into vhosts: hold them to the same rules as manifests.
        let s = p.to_string_lossy();
        if s.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, ';' | '{' | '}' | '"' | '\'' | '$' | '#' | '\\')
        }) {
            bad(
                at(written.as_ref().map(|w| w.pos)),
                format!(
                    "{what} `{}` contains a character nginx would misread",
                    s.escape_debug()
                ),
            );
        }
    }
    let port = |p: &Option<Sp<u16>>, default: u16| p.as_ref().map_or(default, |p| p.value);
    let pos_of = |p: &Option<Sp<u16>>| p.as_ref().map(|p| p.pos);
    let http_port = port(&raw.http_port, 80);
    let https_port = port(&raw.https_port, 443);
    let probe_port = port(&raw.probe_port, DEFAULT_PROBE_PORT);
    let zero = [
        (http_port, pos_of(&raw.http_port)),
        (https_port, pos_of(&raw.https_port)),
        (probe_port, pos_of(&raw.probe_port)),
    ]
    .into_iter()
    .find(|(p, _)| *p == 0);
    if let Some((_, pos)) = zero {
        bad(
            at(pos),
            "nginx.http_port, nginx.https_port and nginx.probe_port must be 1-65535".into(),
        );
    } else if probe_port == http_port || probe_port == https_port {
        bad(
            at(pos_of(&raw.probe_port).or(pos_of(&raw.http_port))),
            format!(
                "nginx.probe_port {probe_port} is a port the sites listen on; vsa's probe needs a port of its own"
            ),
        );
    }
    let resolver = raw
        .resolver
        .as_ref()
        .map_or_else(|| "127.0.0.11".into(), |r| r.value.clone());
    if resolver.split_whitespace().any(|r| {
        r.parse::<std::net::IpAddr>().is_err()
            && names::dns_name(r).is_err()
            && r.parse::<std::net::SocketAddr>().is_err()
    }) || resolver.contains(';')
    {
        bad(
            at(raw.resolver.as_ref().map(|r| r.pos)),
            format!(
                "nginx.resolver `{}` must be IP addresses separated by spaces",
                resolver.escape_debug()
            ),
        );
    }
    let argv = |v: &Option<Sp<Vec<String>>>,
                default: &[&str],
                what: &str,
                bad: &mut dyn FnMut(Pos, String)|
     -> Vec<String> {
        match v {
            Some(v) if v.is_empty() => {
                bad(v.pos, format!("{what} must not be empty"));
                default.iter().map(|s| s.to_string()).collect()
            }
            Some(v) => v.value.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    };
    let test = argv(&raw.test, &["nginx", "-t"], "nginx.test", bad);
    let reload = argv(&raw.reload, &["nginx", "-s", "reload"], "nginx.reload", bad);
    NginxConfig {
        test,
        reload,
        container: raw.container.clone(),
        group: raw.group.clone().unwrap_or_else(|| "www-data".into()),
        http_port,
        https_port,
        paths: nginx_paths,
        resolver,
        ipv6: raw.ipv6.unwrap_or(true),
        probe_port,
        error_log,
    }
}

/// Removes `.` and `..` components without touching the filesystem, so
/// paths written into vhosts read cleanly.
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        Config::parse(&ConfigSource {
            file: "vsa.yaml",
            text: Some(text),
            base_dir: Path::new("/cfg"),
            root: Path::new("/sandbox"),
        })
    }

    /// The examples in deploy/ are what users copy: they must parse, with
    /// every documented key.
    #[test]
    fn the_shipped_examples_parse() {
        let production = parse(include_str!("../../../deploy/examples/vsa.yaml")).unwrap();
        assert!(production.repo.url.is_some());
        assert!(production.repo.token_file.is_some());
        let sandbox = parse(include_str!("../../../deploy/examples/sandbox.yaml")).unwrap();
        assert_eq!(sandbox.mode, Mode::Report);
        // The commented SSH lines, uncommented, are valid too.
        let ssh = include_str!("../../../deploy/examples/vsa.yaml")
            .replace("  # ssh_key_file:", "  ssh_key_file:")
            .replace("  # known_hosts_file:", "  known_hosts_file:");
        let ssh = parse(&ssh).unwrap();
        assert_eq!(
            ssh.repo.known_hosts_file,
            Some(PathBuf::from("/etc/vsa/known_hosts"))
        );
        assert_eq!(
            ssh.repo.ssh_key_file,
            Some(PathBuf::from("/etc/vsa/git.key"))
        );
    }

    #[test]
    fn defaults_live_under_the_root() {
        let c = Config::defaults(Path::new("/sandbox"));
        assert_eq!(c.paths.vhosts, PathBuf::from("/sandbox/etc/nginx/conf.d"));
        assert_eq!(
            c.paths.audit_log,
            PathBuf::from("/sandbox/var/log/vsa/audit.jsonl")
        );
        assert_eq!(c.nginx.paths.htpasswd, c.paths.htpasswd);
        assert_eq!(c.repo.poll_ms, 60_000);
        assert_eq!(c.repo.timeout_ms, 30_000);
        assert_eq!(c.mode, Mode::Apply);
    }

    #[test]
    fn relative_paths_follow_the_file_absolute_ones_stay() {
        let c = parse("host: vps-01\nrepo: {path: ../repo}\npaths: {vhosts: /x/conf.d}\n").unwrap();
        assert_eq!(c.repo.path, PathBuf::from("/repo"));
        assert_eq!(c.paths.vhosts, PathBuf::from("/x/conf.d"));
    }

    #[test]
    fn remote_key_and_known_hosts_files_are_paths() {
        let c = parse(
            "repo:\n  url: ssh://git@example.com/ops/state.git\n  ssh_key_file: deploy.key\n  known_hosts_file: /etc/vsa/known_hosts\n",
        )
        .unwrap();
        assert_eq!(c.repo.ssh_key_file, Some(PathBuf::from("/cfg/deploy.key")));
        assert_eq!(
            c.repo.known_hosts_file,
            Some(PathBuf::from("/etc/vsa/known_hosts"))
        );
        assert_eq!(parse("").unwrap().repo.known_hosts_file, None);
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let e = parse("host: vps-01\nnginx:\n  tset: [nginx]\n").unwrap_err();
        assert_eq!((e[0].line, e[0].col), (3, 3));
        assert!(
            e[0].message.contains("unknown field `tset`"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn budget_breaches_read_as_words() {
        let aliases = vec!["*h"; 101].join(", ");
        let e = parse(&format!(
            "host: &h vps-01\nnginx: {{ test: [{aliases}] }}\n"
        ))
        .unwrap_err();
        assert!(
            e[0].message.contains("budget for aliases"),
            "{}",
            e[0].message
        );
        assert!(!e[0].message.contains(" at line "), "{}", e[0].message);
    }

    #[test]
    fn problems_found_after_parsing_name_the_value_they_are_about() {
        let e = parse(
            "host: vps-01\nrepo:\n  poll: soon\nnginx:\n  http_port: 0\n  resolver: 'a;b'\n  test: []\ndashboard:\n  listen: nowhere\ndocker: { network: 'bad name' }\n",
        )
        .unwrap_err();
        let at: Vec<(u32, u32, &str)> = e
            .iter()
            .map(|p| {
                (
                    p.line,
                    p.col,
                    p.message.split_whitespace().next().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            at,
            [
                (3, 9, "repo.poll:"),
                (5, 14, "nginx.http_port,"),
                (6, 13, "nginx.resolver"),
                (7, 9, "nginx.test"),
                (9, 11, "dashboard.listen"),
                (10, 20, "docker.network"),
            ]
        );
    }

    #[test]
    fn bad_values_are_reported() {
        let e = parse("repo: {poll: soon}\ndashboard: {listen: nowhere}\n").unwrap_err();
        assert_eq!(e.len(), 2);
        let e = parse("repo: {url: 'http://git.example.com/s.git', token_file: t}\n").unwrap_err();
        assert!(
            e[0].message.contains("only over https://"),
            "{}",
            e[0].message
        );
        let e = parse("repo: {timeout: 10ms}\n").unwrap_err();
        assert!(e[0].message.contains("repo.timeout"), "{}", e[0].message);
        assert_eq!(
            parse("repo: {timeout: 2m}\n").unwrap().repo.timeout_ms,
            120_000
        );
    }
}
