//! Cluster-wide client ids and session hand-over (work in progress: see `claims`).

pub mod claims;
