//! The Coolpy7 operator's library: the `Coolpy7Cluster` custom resource ([`crd`]), a pure
//! builder per child object ([`children`]), the reconciler that applies them ([`reconcile`]),
//! its [`metrics`], and Kubernetes quantities read as bytes ([`quantity`]).
pub mod children;
pub mod crd;
pub mod lease;
pub mod metrics;
pub mod quantity;
pub mod reconcile;
