//! The sync sender: takes what the peers' queues hold (best-effort batches, link segments,
//! retransmissions) and sends it from the sync socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BufMut;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::debug;

use super::super::auth::DatagramKey;
use super::super::peers::{Peers, LINK_VERSION};
use super::super::replay::SequenceClock;
use super::wire::{encode_header, encode_parties, BATCH_BYTES, KIND_CONTROL_SEGMENT, KIND_SEGMENT};
use super::Origin;
use crate::metrics::{ClusterDrop, ClusterPort, Metrics};

/// Link segments taken from one peer per turn of the sender, so that one busy peer does not
/// hold the others back.
const SEGMENTS_PER_TURN: usize = 64;

/// How often the sender looks for membership changes when nothing else wakes it.
const MEMBERS_POLL: Duration = Duration::from_millis(100);

/// Sends what is queued for the peers, as best-effort datagrams and link segments, and keeps
/// the peers in step with membership. When `stop` fires, it goes on until nothing is left to
/// send or to be acknowledged (the wills of the connections closed at shutdown), and returns.
pub async fn send_loop(
    socket: Arc<UdpSocket>,
    peers: Arc<Peers>,
    mut stop: watch::Receiver<bool>,
    key: DatagramKey,
    origin: Origin,
    metrics: Arc<Metrics>,
) {
    let mut sequence = SequenceClock::new(origin.started);
    let mut datagram = Vec::with_capacity(BATCH_BYTES + 512);
    let mut stopping = false;
    loop {
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut more = false;
        let list = peers.list().clone();
        for peer in list.iter() {
            if peer.control_lost() {
                peers.restart_control(peer);
            }
            let transmits = peer.take_transmits(now, SEGMENTS_PER_TURN);
            metrics
                .cluster
                .segments_retransmitted
                .inc_by(transmits.retransmitted);
            more |= transmits.more;
            deadline = match (deadline, transmits.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let to = peer.identity.sync_addr();
            for (count, run) in &transmits.runs {
                datagram.clear();
                encode_header(
                    &mut datagram,
                    peer.publish_version,
                    &origin,
                    &peer.identity,
                    sequence.next_seq(),
                );
                datagram.put_u16(*count);
                datagram.extend_from_slice(run);
                key.seal(&mut datagram);
                send(&socket, &datagram, to, &metrics).await;
            }
            for (kind, (link, acked), segments) in [
                (
                    KIND_CONTROL_SEGMENT,
                    transmits.control_link,
                    &transmits.control_segments,
                ),
                (KIND_SEGMENT, transmits.link, &transmits.segments),
            ] {
                for (seq, data) in segments {
                    datagram.clear();
                    encode_parties(&mut datagram, LINK_VERSION, kind, &origin, &peer.identity);
                    datagram.put_u64(link);
                    datagram.put_u64(*seq);
                    datagram.put_u64(acked);
                    datagram.extend_from_slice(data);
                    key.seal(&mut datagram);
                    send(&socket, &datagram, to, &metrics).await;
                }
            }
        }
        if stopping && peers.all_idle() {
            return;
        }
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        let wake_at = deadline.map_or(now + MEMBERS_POLL, |d| d.min(now + MEMBERS_POLL));
        tokio::select! {
            _ = peers.woken() => {}
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            _ = stop.changed(), if !stopping => stopping = true,
        }
    }
}

pub(super) async fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr, metrics: &Metrics) {
    match socket.send_to(datagram, to).await {
        Ok(_) => metrics.cluster.datagram_out(ClusterPort::Sync),
        Err(error) => {
            debug!(%error, %to, "sync send failed");
            metrics
                .cluster
                .dropped(ClusterPort::Sync, ClusterDrop::SendError)
                .inc();
        }
    }
}
