//! Finding and reading the agent configuration (DESIGN §4): `--config FILE`,
//! else `$VSA_CONFIG`, else `$VSA_ROOT/etc/vsa/vsa.yaml`; a missing default
//! file means built-in defaults, a missing named file is an error.

use std::path::{Path, PathBuf};

use vsa_core::config::{Config, ConfigSource};

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read configuration {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A configuration and where it came from, for messages.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: Config,
    /// The file read, or "built-in defaults".
    pub origin: String,
}

/// Reads the configuration named by `flag` (`--config`), else `env_config`
/// (`$VSA_CONFIG`), else the default file under `root` (`$VSA_ROOT`, `/`
/// when unset).
pub fn load(
    flag: Option<&Path>,
    env_config: Option<&Path>,
    root: Option<&Path>,
) -> Result<LoadedConfig, ConfigFileError> {
    let root = absolute(root.unwrap_or(Path::new("/")));
    let (path, explicit) = match flag.or(env_config) {
        Some(p) => (p.to_owned(), true),
        None => (root.join("etc/vsa/vsa.yaml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
        Err(source) => {
            return Err(ConfigFileError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let base_dir = absolute(path.parent().unwrap_or(Path::new(".")));
    let file = path.display().to_string();
    let config = Config::parse(&ConfigSource {
        file: &file,
        text: text.as_deref(),
        base_dir: &base_dir,
        root: &root,
    })
    .map_err(|problems| {
        ConfigFileError::Invalid(problems.iter().map(ToString::to_string).collect())
    })?;
    Ok(LoadedConfig {
        config,
        origin: if text.is_some() {
            file
        } else {
            "built-in defaults".to_owned()
        },
    })
}

/// `p` made absolute against the current directory (unchanged on error).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}
