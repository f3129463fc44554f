//! How clients reach the broker, below MQTT: what a listener must do with a connection's first
//! bytes before the MQTT handshake sees them.
//!
//! Today that is [`proxy`], the PROXY protocol header a load balancer puts ahead of the client's
//! bytes. The TCP listener itself is [`crate::listener`]; TLS and WebSocket will join it here, each
//! handing the connection task a stream it reads MQTT from without knowing the transport.

pub mod proxy;
