//! Command-line definitions: every flag and its help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "vsactl: the vsa engine on the command line.

vsa keeps NGINX vhosts, htpasswd files, TLS certificates and Docker containers
on each host equal to YAML manifests in a Git repository. vsactl validates those
manifests and shows exactly what would change on a host, without touching it.";

const AFTER: &str = "\
Typical session:
  vsactl validate                      check every manifest (file:line:col per problem)
  vsactl diff                          what would change on this host (exit 1 if anything)
  vsactl diff --format markdown        the same, for a pull-request comment
  vsactl render shop.example.com       the vhost vsa would write for one site
  vsactl hash-password < pw.txt        a bcrypt hash for a site's auth.users

Configuration: --config FILE, else $VSA_CONFIG, else $VSA_ROOT/etc/vsa/vsa.yaml
(VSA_ROOT defaults to /). Without a file, built-in defaults apply, with every
path under $VSA_ROOT.";

#[derive(Debug, Parser)]
#[command(name = "vsactl", version, about = ABOUT, after_help = AFTER, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Agent configuration file [default: $VSA_CONFIG, else $VSA_ROOT/etc/vsa/vsa.yaml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Desired-state repository to read (overrides `repo.path`); read as is, uncommitted files included
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Fleet host to plan for (overrides `host` in the configuration)
    #[arg(long, global = true, value_name = "ID")]
    pub host: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable, coloured on a terminal (NO_COLOR honoured)
    #[default]
    Text,
    /// Machine-readable: the plan JSON of the vsa contract
    Json,
    /// One section per host, for a pull-request comment
    Markdown,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every manifest of the repository and print each problem as file:line:col
    ///
    /// Exit status: 0 when valid (warnings allowed), 1 when anything is invalid.
    Validate {
        /// Output format (text or json)
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show what would change on this host; touches nothing
    ///
    /// Compares the manifests with what is really on the host (vhost and htpasswd
    /// files, certificates, access logs). Files vsa did not write are listed as
    /// unmanaged and never planned for change or deletion.
    ///
    /// With --base, compares two commits instead (no live state needed): the
    /// rendered per-host change a pull request makes, for review.
    ///
    /// Exit status, as diff(1): 0 in sync, 1 changes pending, 2 error.
    Diff {
        /// Output format
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Compare the desired state at this commit (e.g. origin/main) with --head
        #[arg(long, value_name = "REF")]
        base: Option<String>,
        /// With --base: the commit to compare against [default: HEAD]
        #[arg(long, value_name = "REF", requires = "base")]
        head: Option<String>,
    },
    /// Converge this host: write vhosts, htpasswd files and logs, test, reload once
    ///
    /// Shows the plan, then asks on a terminal (or takes --yes). Files are
    /// written atomically; `nginx -t` runs before the one reload of each pass.
    /// A site nginx rejects gets its previous files back and is reported by
    /// name with nginx's error; every other site still converges. Every action
    /// goes to the audit log. Only one apply runs at a time on a host.
    ///
    /// Exit status: 0 converged, 1 something failed (the rest still applied),
    /// 2 refused (no --yes without a terminal) or invalid input.
    Apply {
        /// Show the plan and what would be executed; write, reload and start nothing
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
        /// Output format of the plan
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// How long to wait for another apply on this host to finish
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        lock_timeout: std::time::Duration,
    },
    /// Show each site's state (in sync, pending, drifted, failed) and the last apply
    ///
    /// pending: the desired state changed since the last apply (or the site
    /// is new); drifted: the host changed while the desired state did not;
    /// failed: the last apply could not apply it (with nginx's error).
    Status {
        /// Output format (text or json)
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show the certificates on this host: expiry, days left, status, issuer
    ///
    /// Reads paths.letsencrypt in certbot's layout (live/<domain>/fullchain.pem
    /// and privkey.pem). Status: valid, warning (≤ 30 days left), critical
    /// (≤ 14 days), expired. Notes a private key that does not match its
    /// certificate, a certificate that does not cover its site's names, and
    /// `tls: acme` sites with no certificate yet.
    Certs {
        /// Output format (text or json)
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show the audit trail, or verify its hash chain
    ///
    /// Exit status: 0, or 1 with --verify when a line was edited, removed or reordered.
    Audit {
        /// Only events newer than this, e.g. 30m, 24h, 7d
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        since: Option<std::time::Duration>,
        /// Check the hash chain instead of printing events
        #[arg(long)]
        verify: bool,
        /// Output format (text, or json: one event per line as in the log)
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print the vhost vsa would write for one site
    ///
    /// The HTTPS server is included only when the site's certificate is on disk
    /// (or with --tls), exactly as vsa would write it now.
    Render {
        /// The site's domain
        site: String,
        /// Render as if the certificate were present
        #[arg(long)]
        tls: bool,
    },
    /// Work with stack manifests
    #[command(subcommand)]
    Stack(StackCommand),
    /// Print the JSON Schema of the manifests, for editor completion
    ///
    /// For example, with the YAML language server:
    ///   vsactl schema > .vsa-schema.json
    ///   # yaml-language-server: $schema=../.vsa-schema.json
    Schema,
    /// Print a bcrypt hash of a password read from stdin, for a site's auth.users
    ///
    /// On a terminal the password is asked for twice and not echoed. From a pipe,
    /// the first line is the password. Plaintext passwords never go in git.
    HashPassword {
        /// bcrypt cost (4-31); each step doubles the work
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
        cost: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Scaffold stacks/NAME.yaml in the repository: one service, ready to edit
    ///
    /// The container will be named NAME-app. Validate with `vsactl validate`,
    /// review with `vsactl diff`. Reusable stacks of the product (reverse
    /// proxy, dashboard, observability) are in the `stacks/` directory of
    /// vsa's source.
    New {
        /// The stack's name (a-z, 0-9, `-`, `_`, `.`; starts with a letter or digit)
        name: String,
        /// The fleet host it runs on [default: `host` of the configuration]
        #[arg(long = "on", value_name = "HOST")]
        on: Option<String>,
        /// The image of its service
        #[arg(long, default_value = "nginx:1.27-alpine")]
        image: String,
        /// The port the service listens on (for the site that points at it)
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    vsa_core::names::parse_duration(s).map(std::time::Duration::from_millis)
}
