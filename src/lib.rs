//! rsgo: a reconciling controller for container stacks.
//!
//! CI pipelines call webhooks ([`api`]) with an API key ([`auth`]) to redeploy, upgrade or
//! re-sync stacks. The hooks only record desired state in the [`store`]; the reconciler
//! ([`reconcile`]) makes a [`runtime`] match it, using products from the [`catalog`].

#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod duration;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod retry;
pub mod runtime;
pub mod store;

pub use error::{Error, Result};
