//! vsa's pure core: manifests, validation, rendering and planning.
//!
//! Architecture Invariant: nothing in this crate does I/O. No filesystem,
//! no network, no Docker, no clock, no environment: callers read files and
//! observe the host, then hand the results in. That keeps `plan` a function
//! of its inputs, testable without a host, and the same for every caller.

pub mod certs;
pub mod config;
pub mod docker;
pub mod event;
pub mod load;
pub mod manifest;
pub mod model;
pub mod names;
pub mod plan;
pub mod problem;
pub mod render;
pub mod schema;
pub mod span;
pub mod steps;
pub mod validate;

mod unknown_fields;

pub use load::SourceFile;
pub use model::Model;
pub use plan::{Observed, Plan, plan};
pub use problem::Problem;
pub use render::Renderer;
pub use validate::{Loaded, load};
