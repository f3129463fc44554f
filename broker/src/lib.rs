//! Coolpy7: a clustered MQTT broker.
pub mod codec;
