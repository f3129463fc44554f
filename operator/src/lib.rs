//! The Coolpy7 operator's library: the `Coolpy7Cluster` custom resource.
pub mod children;
pub mod crd;
