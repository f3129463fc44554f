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
    /// Aliases we may set: the smaller of the client's Topic Alias Maximum and ours.
    outbound_alias_maximum: u16,
    /// The alias tables, made on first use: every idle MQTT 5 connection would pay for them
    /// otherwise, and many never use an alias.
    inbound_aliases: Option<Box<InboundAliases>>,
    outbound_aliases: Option<Box<OutboundAliases>>,
}

impl Negotiated {
    /// From the CONNECT's properties and the broker's configuration.
    pub(super) fn new(connect: &PropertyValues, config: &Config) -> Negotiated {
        Negotiated {
            receive_maximum: connect.receive_maximum.unwrap_or(u16::MAX),
            maximum_packet_size: connect
                .maximum_packet_size
                .map_or(usize::MAX, |size| size as usize),
            connect_session_expiry: connect.session_expiry_interval.unwrap_or(0),
            topic_alias_maximum: config.max_topic_aliases,
            outbound_alias_maximum: connect
                .topic_alias_maximum
                .unwrap_or(0)
                .min(config.max_topic_aliases),
            inbound_aliases: None,
            outbound_aliases: None,
        }
    }

    /// The aliases the client set.
    pub(super) fn inbound_aliases(&mut self) -> &mut InboundAliases {
        self.inbound_aliases.get_or_insert_with(Default::default)
    }

    /// The topic the client's `alias` stands for, if it set one.
    pub(super) fn inbound_alias_topic(&self, alias: u16) -> Option<&bytes::Bytes> {
        self.inbound_aliases.as_ref()?.topic(alias)
    }

    /// Whether the broker may use aliases on this connection.
    pub(super) fn outbound_aliases_enabled(&self) -> bool {
        self.outbound_alias_maximum > 0
    }

    /// The aliases the broker set.
    pub(super) fn outbound_aliases(&mut self) -> &mut OutboundAliases {
        let maximum = self.outbound_alias_maximum;
        self.outbound_aliases
            .get_or_insert_with(|| Box::new(OutboundAliases::new(maximum)))
    }
}
