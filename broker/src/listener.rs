//! An MQTT listener (TCP, TLS, WebSocket or WSS: they differ only in the
//! [`TransportSettings`] their connections get): accepts connections and spawns a
//! [`connection`](crate::connection) task for each, until shutdown.
//!
//! Every socket takes one of the MQTT [`Slots`] the fd limit allows (shared by all listeners) (see
//! [`crate::admission`]) for its whole life, handshake included; a connection accepted beyond
//! them is closed at once, so clients of a full broker see a close rather than wait in the
//! backlog, and the descriptors kept for HTTP probes and the cluster stay free.
//!
//! With `-cr`, a connection accepted beyond the listener's connection rate is closed at once too,
//! before any handshake work.
//!
//! Accept errors (which the slots should make rare) are logged and retried with a growing
//! pause instead of ending the server, so that a burst of connections cannot take the listener
//! down.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::abuse::TokenBucket;
use crate::admission::Slots;
use crate::broker::Broker;
use crate::connection;
use crate::metrics::Refusal;
use crate::transport::TransportSettings;

/// Accepts connections until `shutdown` turns true. Every connection task holds a clone of
/// `done`, so the caller learns that all of them have finished when its receiver closes.
pub async fn accept_loop(
    listener: TcpListener,
    settings: Arc<TransportSettings>,
    broker: Arc<Broker>,
    sockets: Slots,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let mut backoff = Duration::from_millis(10);
    // `-cr`: this loop is the listener's only acceptor, so the bucket needs no lock.
    let mut rate = broker
        .config
        .limits
        .connection_rate
        .map(|per_second| TokenBucket::new(u64::from(per_second), Instant::now()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                broker.metrics.connections_accepted.inc();
                broker.metrics.listener_accepted(settings.kind).inc();
                if let Some(rate) = rate.as_mut() {
                    if !rate.try_take(Instant::now()) {
                        debug!(%peer, listener = %settings.kind, "over the connection rate (-cr); closing");
                        broker.metrics.refused(Refusal::ConnectionRate).inc();
                        broker.metrics.connections_refused.inc();
                        drop(stream);
                        continue;
                    }
                }
                let Some(slot) = sockets.try_take() else {
                    debug!(%peer, listener = %settings.kind, "every MQTT socket the fd limit allows is open; closing");
                    broker.metrics.refused(Refusal::MqttSockets).inc();
                    broker.metrics.connections_refused.inc();
                    drop(stream);
                    continue;
                };
                // Spawned as it is: wrapped in another async block, the task would hold the
                // connection's future twice (see `connection::serve`).
                tokio::spawn(connection::serve(
                    stream,
                    peer,
                    broker.clone(),
                    settings.clone(),
                    connection::Held {
                        slot,
                        done: done.clone(),
                    },
                ));
            }
            Err(error) => {
                warn!(%error, listener = %settings.kind, "accept failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
