//! What an MQTT 5 CONNECT and its CONNACK settled for one connection: the client's limits on
//! what the broker sends it (Receive Maximum, Maximum Packet Size, Topic Alias Maximum, Request
//! Problem Information: nothing to keep, since the broker puts no reason strings or user
//! properties on acknowledgements), the topic aliases of both directions, and the Session Expiry Interval
//! the client started with (a DISCONNECT may change it, unless it was 0).

use super::aliases::{InboundAliases, OutboundAliases};
use crate::codec::PropertyValues;
use crate::config::Config;

pub(super) struct Negotiated {
    /// The client's Receive Maximum: QoS 1/2 deliveries it takes unacknowledged.
    pub(super) receive_maximum: u16,
    /// The client's Maximum Packet Size; `usize::MAX` when it set none.
    pub(super) maximum_packet_size: usize,
    /// The Session Expiry Interval of the CONNECT, seconds.
    pub(super) connect_session_expiry: u32,
    /// Our Topic Alias Maximum (`-mta`): aliases the client may set.
    pub(super) topic_alias_maximum: u16,
    pub(super) inbound_aliases: InboundAliases,
    pub(super) outbound_aliases: OutboundAliases,
}

impl Negotiated {
    /// From the CONNECT's properties and the broker's configuration.
    pub(super) fn new(connect: &PropertyValues, config: &Config) -> Negotiated {
        let outbound_aliases = connect
            .topic_alias_maximum
            .unwrap_or(0)
            .min(config.max_topic_aliases);
        Negotiated {
            receive_maximum: connect.receive_maximum.unwrap_or(u16::MAX),
            maximum_packet_size: connect
                .maximum_packet_size
                .map_or(usize::MAX, |size| size as usize),
            connect_session_expiry: connect.session_expiry_interval.unwrap_or(0),
            topic_alias_maximum: config.max_topic_aliases,
            inbound_aliases: InboundAliases::default(),
            outbound_aliases: OutboundAliases::new(outbound_aliases),
        }
    }
}
