//! Coolpy7's publish gateway: a message that arrives by HTTP (`POST /pub`) or CoAP instead of
//! an MQTT connection. It is authenticated and authorized exactly as an MQTT client's CONNECT and
//! PUBLISH would be (the same `-as`, the same rules), then published like one: to the local
//! subscribers and the other cluster members. The HTTP and CoAP front ends only translate their
//! requests into a [`GatewayPublish`] and the [`GatewayRefusal`] back into their status codes.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tracing::debug;

use crate::auth::{AuthFailure, Credentials};
use crate::broker::Broker;
use crate::codec::QoS;
use crate::metrics::Denied;
use crate::router::Message;
use crate::topic;

/// A message to publish, with the credentials that came with it.
pub struct GatewayPublish<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
    /// `http` or `coap`, as the authentication service is told.
    pub via: &'static str,
    pub topic: &'a str,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Bytes,
}

/// Why a gateway message was not published.
#[derive(Debug)]
pub enum GatewayRefusal {
    /// Not a topic a client may publish to (empty, wildcards, too deep).
    InvalidTopic,
    /// Larger than `-mpl` allows a PUBLISH to be.
    TooLarge,
    /// The credentials were refused.
    Unauthenticated(AuthFailure),
    /// The rules do not let this client publish to this topic.
    Forbidden,
}

/// Authenticates, authorizes and publishes one message.
pub async fn publish(broker: &Broker, request: GatewayPublish<'_>) -> Result<(), GatewayRefusal> {
    if !topic::is_valid_topic_name(request.topic.as_bytes()) {
        return Err(GatewayRefusal::InvalidTopic);
    }
    // The PUBLISH an MQTT client would have sent: fixed header, topic, packet id, payload.
    let size = 5 + 2 + request.topic.len() + 2 + request.payload.len();
    if size > broker.config.max_packet_size {
        return Err(GatewayRefusal::TooLarge);
    }
    let topic = Bytes::copy_from_slice(request.topic.as_bytes());
    if let Some(control) = &broker.access {
        let credentials = Credentials {
            client_id: request.client_id,
            username: request.username,
            password: request.password,
            peer: request.peer,
            protocol: 0,
            listener: request.via,
            certificate_user: false,
        };
        let identity = match control.authenticate(&credentials).await {
            Ok(identity) => identity,
            Err(failure) => {
                broker.metrics.auth_failed(failure.kind).inc();
                debug!(peer = %request.peer, client_id = request.client_id, via = request.via, reason = %failure.reason, "gateway publish: authentication failed");
                return Err(GatewayRefusal::Unauthenticated(failure));
            }
        };
        // A UDP source address is whatever the sender wrote: it grants (or denies) nothing.
        let address = (request.via != "coap").then(|| request.peer.ip());
        let mut authorizer = control.authorizer(identity, Arc::from(request.client_id), address);
        if !authorizer.may_publish(&topic) {
            broker.metrics.denied(Denied::Publish).inc();
            return Err(GatewayRefusal::Forbidden);
        }
    }
    broker
        .metrics
        .record_received(request.qos, request.payload.len());
    let message = Message::new(topic, request.payload, request.qos, request.retain);
    broker.publish(Arc::new(message));
    Ok(())
}
