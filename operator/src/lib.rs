//! The Coolpy7 operator's library: the `Coolpy7Cluster` custom resource ([`crd`]), a pure
//! builder per child object ([`children`]), the reconciler that applies them ([`reconcile`]),
//! and its [`metrics`].
pub mod children;
pub mod crd;
pub mod lease;
pub mod metrics;
pub mod reconcile;
