//! The apply engine: executes a [`vsa_core::Plan`] on the host, keeps
//! nginx valid while doing it, audits every action.
//!
//! `vsactl apply` and the daemon both open one [`Engine`] from the config
//! and go through [`apply::apply`] under the host lock of
//! [`lock::HostLock`]. Every action is a typed [`events::Event`]; the
//! daemon's [`policy`] decides when a failed resource is tried again;
//! [`snapshot`] is what every view of the host reads.

pub mod apply;
pub mod engine;
pub mod events;
pub mod lock;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod snapshot;

pub use apply::{ApplyOptions, ApplyReport, Failure, FailureClass, apply};
pub use engine::Engine;
pub use lock::HostLock;
