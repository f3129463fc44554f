//! Coolpy7: a clustered MQTT broker for Kubernetes.
//!
//! Data flows through the modules in one direction:
//! [`listener`] accepts TCP connections and hands each to a [`connection`] task, which decodes
//! packets with [`codec`], keeps the client's [`session`] state, and passes every PUBLISH to the
//! [`router`]; the router matches it against the subscription tree and pushes it into the
//! mailboxes of the matching sessions, whose connection tasks encode and write it. [`server`]
//! wires these together with the [`http`] API and [`metrics`], from a [`config`], and on SIGTERM
//! [`drain`]s the node. In cluster
//! mode, [`cluster`] forwards each locally published message to the other nodes and hands what
//! they forward to the router. [`passwd`] is the `coolpy7 passwd` subcommand, which edits the
//! password file that [`auth`] reads.

pub mod abuse;
pub mod admission;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod coap;
pub mod codec;
pub mod config;
pub mod connection;
pub mod drain;
pub mod file_watch;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod parker;
pub mod passwd;
pub mod router;
pub mod scheduling;
pub mod server;
pub mod session;
pub mod store;
pub mod topic;
pub mod transport;

/// The broker's version, as logged at start and reported by the HTTP API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
