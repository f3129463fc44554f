//! A well-behaved MQTT client (rumqttc) for the parts of a test that are not about the wire
//! format: its event loop runs in a spawned task that forwards incoming PUBLISHes to one channel
//! and every other event to another, and never reconnects (a new connection is a new
//! [`TestClient`]).

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnAck, ConnectionError, Event, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::TIMEOUT;

/// Options for a client of the broker at `addr`: clean session, keep alive 30 s, packets up to
/// 2 MiB both ways.
pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    options
}

/// `QoS` from 0, 1 or 2.
pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => panic!("no QoS {level}"),
    }
}

pub struct TestClient {
    pub client: AsyncClient,
    /// The CONNACK that opened this connection.
    pub connack: ConnAck,
    id: String,
    publishes: mpsc::UnboundedReceiver<Publish>,
    events: mpsc::UnboundedReceiver<Event>,
    closed: watch::Receiver<Option<String>>,
    task: Option<JoinHandle<()>>,
}

impl TestClient {
    /// Connects and waits for a successful CONNACK; panics otherwise.
    pub async fn connect(options: MqttOptions) -> TestClient {
        let id = options.client_id();
        match TestClient::try_connect(options).await {
            Ok(client) => client,
            Err(e) => panic!("client {id:?} could not connect: {e:?}"),
        }
    }

    /// Connects; returns the error (e.g. `ConnectionRefused(code)`) if the broker refuses.
    pub async fn try_connect(options: MqttOptions) -> Result<TestClient, ConnectionError> {
        let id = options.client_id();
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let connack = match tokio::time::timeout(TIMEOUT, eventloop.poll()).await {
            Err(_) => panic!("client {id:?}: no CONNACK within {TIMEOUT:?}"),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Event::Incoming(Packet::ConnAck(connack)))) => connack,
            Ok(Ok(other)) => panic!("client {id:?}: expected CONNACK first, got {other:?}"),
        };
        let (publish_tx, publishes) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (closed_tx, closed) = watch::channel(None);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = publish_tx.send(publish);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                        // DISCONNECT is written and flushed; dropping the event loop closes
                        // the socket.
                        let _ = closed_tx.send(Some("DISCONNECT sent".into()));
                        return;
                    }
                    Ok(event) => {
                        let _ = event_tx.send(event);
                    }
                    Err(e) => {
                        let _ = closed_tx.send(Some(format!("{e}")));
                        return;
                    }
                }
            }
        });
        Ok(TestClient {
            client,
            connack,
            id,
            publishes,
            events,
            closed,
            task: Some(task),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn session_present(&self) -> bool {
        self.connack.session_present
    }

    fn closed_reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "event loop ended".into())
    }

    /// Waits for the first event for which `pick` returns something; earlier events are dropped.
    async fn wait_event<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("client {:?}: no {what} within {TIMEOUT:?}", self.id),
                Ok(None) => panic!(
                    "client {:?}: connection closed while waiting for {what} ({})",
                    self.id,
                    self.closed_reason()
                ),
                Ok(Some(event)) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
            }
        }
    }

    /// Publishes and, for QoS 1 / 2, waits for PUBACK / PUBCOMP (so the broker has routed it).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        let payload: Vec<u8> = payload.into();
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .unwrap_or_else(|e| panic!("client {:?}: publish request failed: {e}", self.id));
        let pkid = self
            .wait_event("outgoing PUBLISH", |e| match e {
                Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                _ => None,
            })
            .await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_event("PUBACK", |e| match e {
                    Event::Incoming(Packet::PubAck(ack)) if ack.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
            QoS::ExactlyOnce => {
                self.wait_event("PUBCOMP", |e| match e {
                    Event::Incoming(Packet::PubComp(comp)) if comp.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK's return codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.subscribe_many(&[(filter, qos)]).await
    }

    /// Subscribes to several filters in one SUBSCRIBE; returns the SUBACK's return codes.
    pub async fn subscribe_many(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReasonCode> {
        let filters: Vec<SubscribeFilter> = filters
            .iter()
            .map(|(path, qos)| SubscribeFilter::new(path.to_string(), *qos))
            .collect();
        self.client
            .subscribe_many(filters)
            .await
            .unwrap_or_else(|e| panic!("client {:?}: subscribe request failed: {e}", self.id));
        let pkid = self
            .wait_event("outgoing SUBSCRIBE", |e| match e {
                Event::Outgoing(Outgoing::Subscribe(pkid)) => Some(*pkid),
                _ => None,
            })
            .await;
        self.wait_event("SUBACK", |e| match e {
            Event::Incoming(Packet::SubAck(ack)) if ack.pkid == pkid => {
                Some(ack.return_codes.clone())
            }
            _ => None,
        })
        .await
    }

    /// Subscribes and asserts the broker granted exactly `qos`.
    pub async fn subscribe_ok(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe(filter, qos).await;
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(qos)],
            "client {:?}: SUBACK for {filter:?} at {qos:?}",
            self.id
        );
    }

    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .unwrap_or_else(|e| panic!("client {:?}: unsubscribe request failed: {e}", self.id));
        let pkid = self
            .wait_event("outgoing UNSUBSCRIBE", |e| match e {
                Event::Outgoing(Outgoing::Unsubscribe(pkid)) => Some(*pkid),
                _ => None,
            })
            .await;
        self.wait_event("UNSUBACK", |e| match e {
            Event::Incoming(Packet::UnsubAck(ack)) if ack.pkid == pkid => Some(()),
            _ => None,
        })
        .await
    }

    /// Acknowledges a PUBLISH (only meaningful with manual acks).
    pub async fn ack(&self, publish: &Publish) {
        self.client
            .ack(publish)
            .await
            .unwrap_or_else(|e| panic!("client {:?}: ack request failed: {e}", self.id));
    }

    /// The next PUBLISH from the broker; panics if none arrives within `timeout`.
    pub async fn recv_publish(&mut self, timeout: Duration) -> Publish {
        match tokio::time::timeout(timeout, self.publishes.recv()).await {
            Ok(Some(publish)) => publish,
            Ok(None) => panic!(
                "client {:?}: connection closed while waiting for a PUBLISH ({})",
                self.id,
                self.closed_reason()
            ),
            Err(_) => panic!("client {:?}: no PUBLISH within {timeout:?}", self.id),
        }
    }

    /// The next `n` PUBLISHes, all within `timeout`.
    pub async fn recv_publishes(&mut self, n: usize, timeout: Duration) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.publishes.recv()).await {
                Ok(Some(publish)) => got.push(publish),
                Ok(None) => panic!(
                    "client {:?}: connection closed after {} of {n} PUBLISHes ({}): {got:?}",
                    self.id,
                    got.len(),
                    self.closed_reason()
                ),
                Err(_) => panic!(
                    "client {:?}: only {} of {n} PUBLISHes within {timeout:?}: {got:?}",
                    self.id,
                    got.len()
                ),
            }
        }
        got
    }

    /// A PUBLISH that has already arrived, if any (does not wait).
    pub fn try_recv_publish(&mut self) -> Option<Publish> {
        self.publishes.try_recv().ok()
    }

    /// Every PUBLISH that arrives within `duration` (waits the whole duration).
    pub async fn drain_publishes(&mut self, duration: Duration) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + duration;
        let mut got = Vec::new();
        while let Ok(Some(publish)) = tokio::time::timeout_at(deadline, self.publishes.recv()).await
        {
            got.push(publish);
        }
        got
    }

    /// Asserts no PUBLISH arrives within `duration` and the connection stays open (so that the
    /// assertion is not vacuous).
    pub async fn expect_no_publish(&mut self, duration: Duration) {
        match tokio::time::timeout(duration, self.publishes.recv()).await {
            Err(_) => {}
            Ok(Some(publish)) => panic!(
                "client {:?}: expected no PUBLISH for {duration:?}, got {publish:?}",
                self.id
            ),
            Ok(None) => panic!(
                "client {:?}: the connection closed while expecting no PUBLISH ({})",
                self.id,
                self.closed_reason()
            ),
        }
    }

    /// Waits for the broker to close this connection; returns the client-side error.
    pub async fn wait_closed(&mut self, timeout: Duration) -> String {
        let id = self.id.clone();
        let waited = tokio::time::timeout(timeout, async {
            // An error means the event loop task is gone, which is a close as well.
            let _ = self.closed.wait_for(|c| c.is_some()).await;
        })
        .await;
        match waited {
            Ok(()) => self.closed_reason(),
            Err(_) => panic!("client {id:?}: connection still open after {timeout:?}"),
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        let finished = match &self.task {
            Some(task) => task.is_finished(),
            None => true,
        };
        finished || self.closed.borrow().is_some()
    }

    /// Sends DISCONNECT, then closes the socket (waiting for both).
    pub async fn disconnect(mut self) {
        let id = self.id.clone();
        if self.is_closed() {
            panic!(
                "client {id:?}: disconnect on a closed connection ({})",
                self.closed_reason()
            );
        }
        self.client
            .disconnect()
            .await
            .unwrap_or_else(|e| panic!("client {id:?}: disconnect request failed: {e}"));
        let task = self.task.take().expect("task");
        match tokio::time::timeout(TIMEOUT, task).await {
            Ok(_) => {}
            Err(_) => panic!("client {id:?}: DISCONNECT not sent within {TIMEOUT:?}"),
        }
        let reason = self.closed_reason();
        assert_eq!(
            reason, "DISCONNECT sent",
            "client {id:?}: the connection ended otherwise"
        );
    }

    /// Closes the socket without DISCONNECT (an abnormal close, for wills and sessions).
    pub async fn drop_connection(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = tokio::time::timeout(TIMEOUT, task).await;
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Conveniences on [`Broker`] for rumqttc clients.
impl Broker {
    /// Client options for this broker (clean session).
    pub fn options(&self, client_id: &str) -> MqttOptions {
        options(self.mqtt_addr(), client_id)
    }

    /// A connected clean-session client.
    pub async fn client(&self, client_id: &str) -> TestClient {
        TestClient::connect(self.options(client_id)).await
    }

    /// A connected client with clean session 0.
    pub async fn persistent_client(&self, client_id: &str) -> TestClient {
        let mut options = self.options(client_id);
        options.set_clean_session(false);
        TestClient::connect(options).await
    }

    /// A connected clean-session client subscribed to `filter` at `qos` (granted as requested).
    pub async fn subscriber(&self, client_id: &str, filter: &str, qos: QoS) -> TestClient {
        let mut client = self.client(client_id).await;
        client.subscribe_ok(filter, qos).await;
        client
    }
}
