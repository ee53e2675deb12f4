//! The apply engine: executes a [`vsa_core::Plan`] on the host, keeps
//! nginx valid while doing it, audits every action.
//!
//! `vsactl apply` and (later) the daemon both go through [`apply::apply`],
//! under the host lock of [`lock::HostLock`].

pub mod apply;
pub mod lock;
pub mod pipeline;

pub use apply::{ApplyOptions, ApplyReport, Failure, apply};
pub use lock::HostLock;
