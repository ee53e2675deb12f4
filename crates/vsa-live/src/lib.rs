//! Adapters between vsa's pure core and the live host.
//!
//! Each module owns one kind of live resource and offers `observe` (and,
//! later, `apply`). Everything host-specific (files, git, processes, the
//! Docker engine) lives here or in the binaries, never in `vsa-core`.

pub mod acme;
pub mod certs;
pub mod config_file;
pub mod docker;
pub mod files;
pub mod git;
pub mod instance;
mod known_hosts;
pub mod nginx;
pub mod repo;
pub use vsa_fs as safe_fs;

pub use files::observe;
pub use repo::read_repo;
