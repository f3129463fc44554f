//! `coolpy7-bench`: an MQTT 3.1.1 / 5.0 load generator (see `coolpy7_tests::bench`).
//!
//! ```text
//! coolpy7-bench fanin   --qos 1 --publishers 4 --secs 10
//! coolpy7-bench fanout  --subscribers 8
//! coolpy7-bench p2p     --pairs 8
//! coolpy7-bench latency --rate 1000 --qos 1
//! coolpy7-bench fanin   --qos 1 --mqtt 5     # MQTT 5.0: topic aliases, Receive Maximum
//! coolpy7-bench conns   --conns 10000 --pid $(pidof coolpy7)
//! coolpy7-bench subs    --filters 1000000 --pid $(pidof coolpy7)
//! coolpy7-bench subs    --persistent --clients 100000 --filters 1000000 --pid $(pidof coolpy7)
//! coolpy7-bench fanin   --qos 1 --publishers 1000   # 1,000 publishers, 64 in flight each
//! coolpy7-bench p2p     --port 8883 --tls --ca ca.crt          # MQTT over TLS
//! coolpy7-bench fanout  --port 8083 --ws                        # MQTT over WebSocket (/mqtt)
//! coolpy7-bench fanin   --port 8084 --ws --tls --ca ca.crt     # WebSocket over TLS
//! coolpy7-bench handshakes --port 8883 --tls --tls-no-verify --connectors 8
//! ```

use clap::Parser;
use coolpy7_tests::bench::{self, Args};

fn main() {
    let args = Args::parse();
    std::process::exit(bench::main(args));
}
