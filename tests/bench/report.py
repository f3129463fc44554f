#!/usr/bin/env python3
"""Turns the JSON lines written by tests/bench/compare.sh into a Markdown table.

    report.py RESULTS.jsonl [--machine JSON] [--settings JSON] [--brokers a,b,c] [--peers JSON]
              [--logs DIR]

One row per figure, one column per broker, then coolpy7's ratio to each peer (Mosquitto,
rumqttd and the brokers of compare.sh's --peer, whose commands --peers gives as
{"NAME": "COMMAND"}). With several runs
of a scenario the median of the successful runs is shown (a `*` marks a figure some of whose
runs failed); a figure whose runs all failed reads `error`. Scenarios run over MQTT 5.0 (ids
ending in `-v5`) give rows starting with `v5`, each right after its 3.1.1 row; scenarios run over
TLS, WebSocket or both (`<id>-tls`, `-ws`, `-wss`) give rows starting with `tls`, `ws`, `wss`
right after the plain TCP ones.
"""

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys

BROKERS = ["coolpy7", "mosquitto", "rumqttd"]
# How the built-in brokers are named in the title; a --peer by its NAME.
TITLES = {"coolpy7": "coolpy7", "mosquitto": "Mosquitto", "rumqttd": "rumqttd"}
TRANSPORTS = ["tls", "ws", "wss"]


def get(rec, path):
    """A number at a dotted path of a record, or None."""
    cur = rec
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    if isinstance(cur, bool) or not isinstance(cur, (int, float)):
        return None
    return float(cur)


def rss_growth_mb(rec):
    before, after = get(rec, "rss_before_kb"), get(rec, "rss_after_kb")
    if before is None or after is None:
        return None
    return (after - before) / 1024.0


def field(path):
    return lambda rec: get(rec, path)


# (label, better, kind, spec):
#   kind "one":   spec = (scenario_id, extractor)
#   kind "sum":   spec = ([scenario_id...], extractor), summed over the scenarios that ran
#   kind "ratio": spec = ((scenario_a, extractor), (scenario_b, extractor)), a / b per broker
#   better: "high" or "low" (shown as an arrow), fmt picked by the label's unit.
def figures(settings):
    extra = settings.get("extra_subs", 10000)
    filters = settings.get("subs_filters", 1000000)
    holders = settings.get("subs_clients", 10000)
    sessions = settings.get("subs_sessions", 100000)
    session_filters = settings.get("subs_session_filters", 10 * sessions)
    offline = f"subs {sessions:,} offline sessions, {session_filters:,} filters"
    q1 = ["fanin-q1", "fanout-q1", "p2p-q1", "latency-q1", "fanout-q1-1000", "fanin-q1-1000"]
    q0 = ["fanin-q0", "fanout-q0", "p2p-q0", "latency-q0", "fanin-extra-subs", "fanout-q0-1000",
          "fanin-q0-1000"]
    users = settings.get("auth_users", 200000)
    q1 = q1 + ["fanin-q1-rules", "fanin-q1-16topics", "fanin-q1-16topics-rules",
               "fanin-q1-persistent", "fanout-q1-persistent"]
    q0 = q0 + ["fanin-q0-rules", "fanin-q0-16topics", "fanin-q0-16topics-rules"]
    allsc = q0 + q1 + ["conns", "fanout-stalled-q0", "fanout-stalled-q1", "handshakes",
                       "handshakes-jwt", "handshakes-password", "handshakes-password-cold",
                       "handshakes-pbkdf2-cold", "subs-sessions"]
    dps = field("delivered_per_sec")
    hps = field("handshakes_per_sec")
    hcpu = field("broker_cpu_us_per_handshake")
    return [
        ("fanin qos0 delivered/s", "high", "one", ("fanin-q0", dps)),
        ("fanin qos1 delivered/s", "high", "one", ("fanin-q1", dps)),
        ("fanout qos0 delivered/s", "high", "one", ("fanout-q0", dps)),
        ("fanout qos1 delivered/s", "high", "one", ("fanout-q1", dps)),
        ("fanout qos0, 1,000 subscribers, delivered/s", "high", "one", ("fanout-q0-1000", dps)),
        ("fanout qos0, 1,000 subscribers: lost", "low", "one", ("fanout-q0-1000", field("lost"))),
        ("fanout qos1, 1,000 subscribers, delivered/s", "high", "one", ("fanout-q1-1000", dps)),
        ("fanout qos1, 1,000 subscribers: lost", "low", "one", ("fanout-q1-1000", field("lost"))),
        ("fanin qos0, 1,000 publishers, delivered/s", "high", "one", ("fanin-q0-1000", dps)),
        ("fanin qos0, 1,000 publishers: lost", "low", "one", ("fanin-q0-1000", field("lost"))),
        ("fanin qos0, 1,000 publishers: not read by the broker at the end", "low", "one",
         ("fanin-q0-1000", field("unread"))),
        ("fanin qos1, 1,000 publishers, delivered/s", "high", "one", ("fanin-q1-1000", dps)),
        ("fanin qos1, 1,000 publishers: lost", "low", "one", ("fanin-q1-1000", field("lost"))),
        ("p2p qos0 delivered/s", "high", "one", ("p2p-q0", dps)),
        ("p2p qos1 delivered/s", "high", "one", ("p2p-q1", dps)),
        ("latency qos0 p50 µs", "low", "one", ("latency-q0", field("latency_us.p50"))),
        ("latency qos0 p99 µs", "low", "one", ("latency-q0", field("latency_us.p99"))),
        ("latency qos0 p99.9 µs", "low", "one", ("latency-q0", field("latency_us.p999"))),
        ("latency qos1 p50 µs", "low", "one", ("latency-q1", field("latency_us.p50"))),
        ("latency qos1 p99 µs", "low", "one", ("latency-q1", field("latency_us.p99"))),
        ("latency qos1 p99.9 µs", "low", "one", ("latency-q1", field("latency_us.p999"))),
        ("conns connected", "high", "one", ("conns", field("connected"))),
        ("conns RSS bytes/conn", "low", "one", ("conns", field("rss_per_conn_bytes"))),
        ("conns connects/s", "high", "one", ("conns", field("connects_per_sec"))),
        ("handshakes/s (connect, CONNECT, CONNACK, DISCONNECT, close)", "high", "one",
         ("handshakes", field("handshakes_per_sec"))),
        ("handshakes: broker CPU µs per handshake", "low", "one",
         ("handshakes", field("broker_cpu_us_per_handshake"))),
        ("handshakes: set-up p50 µs", "low", "one", ("handshakes", field("setup_us.p50"))),
        ("handshakes: set-up p99 µs", "low", "one", ("handshakes", field("setup_us.p99"))),
        # Access control (compare.sh's handshakes-jwt, -password, -password-cold,
        # -pbkdf2-cold, fanin-q0-rules, fanin-q1-rules).
        ("handshakes/s, JWT HS256 (-as 1)", "high", "one", ("handshakes-jwt", hps)),
        ("handshakes, JWT: broker CPU µs per handshake", "low", "one", ("handshakes-jwt", hcpu)),
        ("handshakes, JWT: set-up p50 µs", "low", "one", ("handshakes-jwt", field("setup_us.p50"))),
        ("handshakes, JWT / no auth", "high", "ratio",
         (("handshakes-jwt", hps), ("handshakes", hps))),
        ("handshakes/s, password file, one user (coolpy7 argon2id cached, Mosquitto PBKDF2)",
         "high", "one", ("handshakes-password", hps)),
        ("handshakes, password file, one user: broker CPU µs per handshake", "low", "one",
         ("handshakes-password", hcpu)),
        ("handshakes, password file, one user: set-up p50 µs", "low", "one",
         ("handshakes-password", field("setup_us.p50"))),
        ("handshakes, password file, one user / no auth", "high", "ratio",
         (("handshakes-password", hps), ("handshakes", hps))),
        (f"handshakes/s, password file, a new user each ({users:,}; coolpy7 argon2id, "
         "Mosquitto PBKDF2)", "high", "one", ("handshakes-password-cold", hps)),
        ("handshakes, password file, a new user each: broker CPU µs per handshake", "low", "one",
         ("handshakes-password-cold", hcpu)),
        ("handshakes, password file, a new user each: set-up p50 µs", "low", "one",
         ("handshakes-password-cold", field("setup_us.p50"))),
        ("handshakes, password file, a new user each: set-up p99 µs", "low", "one",
         ("handshakes-password-cold", field("setup_us.p99"))),
        ("handshakes/s, Mosquitto's PBKDF2 file on both, a new user each", "high", "one",
         ("handshakes-pbkdf2-cold", hps)),
        ("handshakes, PBKDF2 on both, a new user each: broker CPU µs per handshake", "low", "one",
         ("handshakes-pbkdf2-cold", hcpu)),
        ("fanin qos0, 1,000 rules, delivered/s", "high", "one", ("fanin-q0-rules", dps)),
        ("fanin qos0, 1,000 rules / no rules", "high", "ratio",
         (("fanin-q0-rules", dps), ("fanin-q0", dps))),
        ("broker CPU % fanin qos0, 1,000 rules", "low", "one",
         ("fanin-q0-rules", field("broker_cpu_pct"))),
        ("fanin qos1, 1,000 rules, delivered/s", "high", "one", ("fanin-q1-rules", dps)),
        ("fanin qos1, 1,000 rules / no rules", "high", "ratio",
         (("fanin-q1-rules", dps), ("fanin-q1", dps))),
        ("broker CPU % fanin qos1, 1,000 rules", "low", "one",
         ("fanin-q1-rules", field("broker_cpu_pct"))),
        ("fanin qos1, persistent subscriber, delivered/s", "high", "one",
         ("fanin-q1-persistent", dps)),
        ("fanin qos1, persistent / clean subscriber", "high", "ratio",
         (("fanin-q1-persistent", dps), ("fanin-q1", dps))),
        ("fanout qos1, 8 persistent subscribers, delivered/s", "high", "one",
         ("fanout-q1-persistent", dps)),
        ("fanout qos1, persistent / clean subscribers", "high", "ratio",
         (("fanout-q1-persistent", dps), ("fanout-q1", dps))),
        ("broker CPU % fanin qos1, persistent subscriber", "low", "one",
         ("fanin-q1-persistent", field("broker_cpu_pct"))),
        ("fanin qos0, 16 topics per publisher, delivered/s", "high", "one",
         ("fanin-q0-16topics", dps)),
        ("fanin qos0, 16 topics per publisher, 1,000 rules, delivered/s", "high", "one",
         ("fanin-q0-16topics-rules", dps)),
        ("fanin qos0, 16 topics per publisher, 1,000 rules / no rules", "high", "ratio",
         (("fanin-q0-16topics-rules", dps), ("fanin-q0-16topics", dps))),
        ("fanin qos1, 16 topics per publisher, delivered/s", "high", "one",
         ("fanin-q1-16topics", dps)),
        ("fanin qos1, 16 topics per publisher, 1,000 rules, delivered/s", "high", "one",
         ("fanin-q1-16topics-rules", dps)),
        ("fanin qos1, 16 topics per publisher, 1,000 rules / no rules", "high", "ratio",
         (("fanin-q1-16topics-rules", dps), ("fanin-q1-16topics", dps))),
        (f"fanin qos0 +{extra} subs delivered/s", "high", "one", ("fanin-extra-subs", dps)),
        (f"fanin qos0 +{extra} subs / plain fanin", "high", "ratio",
         (("fanin-extra-subs", dps), ("fanin-q0", dps))),
        ("fanout qos0 +2 stalled: healthy delivered/s", "high", "one",
         ("fanout-stalled-q0", dps)),
        ("fanout qos0 +2 stalled: RSS growth MB", "low", "one",
         ("fanout-stalled-q0", rss_growth_mb)),
        ("fanout qos0 +2 stalled: lost (healthy)", "low", "one",
         ("fanout-stalled-q0", field("lost"))),
        ("fanout qos1 +2 stalled: healthy delivered/s", "high", "one",
         ("fanout-stalled-q1", dps)),
        ("fanout qos1 +2 stalled: RSS growth MB", "low", "one",
         ("fanout-stalled-q1", rss_growth_mb)),
        ("fanout qos1 +2 stalled: lost (healthy)", "low", "one",
         ("fanout-stalled-q1", field("lost"))),
        (f"subs {filters:,} filters, 1 client: RSS bytes/filter", "low", "one",
         ("subs-1m", field("rss_per_filter_bytes"))),
        (f"subs {filters:,} filters, 1 client: pair's longest gap after its disconnect ms", "low",
         "one", ("subs-1m", field("pair_gap_after_ms"))),
        (f"subs {filters:,} filters, 1 client: slowest CONNECT after its disconnect ms", "low",
         "one", ("subs-1m", field("connect_max_ms"))),
        ("subs 200,000 filters, 1 client: pair's longest gap after its disconnect ms", "low",
         "one", ("subs-200k", field("pair_gap_after_ms"))),
        ("subs 200,000 filters, 1 client: slowest CONNECT after its disconnect ms", "low",
         "one", ("subs-200k", field("connect_max_ms"))),
        (f"subs {filters:,} filters over {holders:,} clients: RSS bytes/filter", "low", "one",
         ("subs-clients", field("rss_per_filter_bytes"))),
        (f"subs {filters:,} filters over {holders:,} clients: pair's longest gap after they "
         "leave ms", "low", "one", ("subs-clients", field("pair_gap_after_ms"))),
        (f"{offline}: RSS bytes/filter", "low", "one",
         ("subs-sessions", field("rss_per_filter_bytes"))),
        (f"{offline}: RSS bytes/session", "low", "one",
         ("subs-sessions", field("rss_per_session_bytes"))),
        (f"{offline}: sessions left/s (connect, subscribe, disconnect)", "high", "one",
         ("subs-sessions", field("sessions_per_sec"))),
        (f"{offline}: sampled sessions found again (of 16)", "high", "one",
         ("subs-sessions", field("sessions_present"))),
        ("broker CPU % fanin qos0", "low", "one", ("fanin-q0", field("broker_cpu_pct"))),
        ("broker CPU % fanin qos1", "low", "one", ("fanin-q1", field("broker_cpu_pct"))),
        ("broker CPU % fanout qos0", "low", "one", ("fanout-q0", field("broker_cpu_pct"))),
        ("broker CPU % fanout qos1, 1,000 subscribers", "low", "one",
         ("fanout-q1-1000", field("broker_cpu_pct"))),
        ("broker CPU % fanin qos1, 1,000 publishers", "low", "one",
         ("fanin-q1-1000", field("broker_cpu_pct"))),
        ("broker CPU % p2p qos0", "low", "one", ("p2p-q0", field("broker_cpu_pct"))),
        ("lost (qos1)", "low", "sum", (q1, field("lost"))),
        ("lost (qos0)", "low", "sum", (q0, field("lost"))),
        ("duplicates", "low", "sum", (allsc, field("duplicates"))),
        ("out-of-order (gaps)", "low", "sum", (allsc, field("gaps"))),
        ("client errors", "low", "sum", (allsc, field("errors"))),
    ]


def variant_figure(fig, suffix, prefix):
    """The same figure read from the `<id><suffix>` variants of its scenarios."""
    label, better, kind, spec = fig
    if kind == "one":
        scen, ex = spec
        spec = (scen + suffix, ex)
    elif kind == "sum":
        scens, ex = spec
        spec = ([s + suffix for s in scens], ex)
    elif kind == "ratio":
        (sa, ea), (sb, eb) = spec
        spec = ((sa + suffix, ea), (sb + suffix, eb))
    return (prefix + label, better, kind, spec)


def v5_figure(fig):
    """The same figure read from the `-v5` variants of its scenarios."""
    return variant_figure(fig, "-v5", "v5 ")


def with_v5(figs):
    """Each figure followed by its v5 variant, then by both over each other transport (rows of
    scenarios that did not run are left out of the table anyway)."""
    for fig in figs:
        yield fig
        yield v5_figure(fig)
        for t in TRANSPORTS:
            over = variant_figure(fig, f"-{t}", f"{t} ")
            yield over
            yield variant_figure(over, "-v5", "v5 ")


class Cell:
    def __init__(self, value=None, partial=False, error=False):
        self.value, self.partial, self.error = value, partial, error


def median_of(records, extractor):
    """Cell for one scenario of one broker: the median over its successful runs; None when
    the scenario did not run for this broker or its runs do not report the figure."""
    if not records:
        return None
    ok = [r for r in records if "error" not in r]
    if not ok:
        return Cell(error=True)
    vals = [v for v in (extractor(r) for r in ok) if v is not None]
    if not vals:
        return None
    return Cell(statistics.median(vals), partial=len(vals) < len(records))


def cell_for(kind, spec, runs):
    if kind == "one":
        scen, ex = spec
        return median_of(runs.get(scen, []), ex)
    if kind == "sum":
        scens, ex = spec
        cells = [median_of(runs.get(s, []), ex) for s in scens]
        cells = [c for c in cells if c is not None]
        if not cells:
            return None
        good = [c for c in cells if not c.error]
        if not good:
            return Cell(error=True)
        return Cell(sum(c.value for c in good),
                    partial=any(c.partial for c in good) or len(good) < len(cells))
    if kind == "ratio":
        (sa, ea), (sb, eb) = spec
        a, b = median_of(runs.get(sa, []), ea), median_of(runs.get(sb, []), eb)
        if a is None or b is None:
            return None
        if a.error or b.error:
            return Cell(error=True)
        if not b.value:
            return None
        return Cell(a.value / b.value, partial=a.partial or b.partial)
    raise ValueError(kind)


def fmt_value(label, cell, kind="one"):
    if cell is None:
        return "–"
    if cell.error:
        return "error"
    v = cell.value
    if kind == "ratio":
        s = f"{v:.2f}"
    elif label.endswith("MB"):
        s = f"{v:,.1f}"
    else:
        s = f"{v:,.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.1f}"
    return s + ("*" if cell.partial else "")


def fmt_ratio(a, b):
    if a is None or b is None or a.error or b.error:
        return "–"
    if b.value == 0:
        return "–" if a.value == 0 else "∞"
    return f"{a.value / b.value:.2f}"


def log_notes(logs_dir, brokers):
    """Warnings and errors the brokers printed, per broker: count and a few distinct ones."""
    notes = []
    if not logs_dir or not os.path.isdir(logs_dir):
        return notes
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    stamp = re.compile(r"^\s*(\d{4}-\d\d-\d\dT[\d:.]+Z?|\d{10}:)\s*")
    for b in brokers:
        count, distinct = 0, collections.Counter()
        for path in sorted(glob.glob(os.path.join(logs_dir, f"*-{b}-r*.broker.log"))):
            try:
                text = open(path, errors="replace").read()
            except OSError:
                continue
            for line in text.splitlines():
                line = ansi.sub("", line).strip()
                if not line or line.startswith("at ") or line.startswith("in "):
                    continue
                # compare.sh's readiness probe opens and closes a socket without CONNECT.
                if "connect packet" in line and "closed by peer" in line:
                    continue
                low = line.lower()
                if any(w in low for w in ("warn", "error", "drop", "panic", "refus")):
                    count += 1
                    key = re.sub(r"\d+", "N", stamp.sub("", line))[:140]
                    distinct[key] += 1
        if count:
            top = "; ".join(f"`{k}` ×{n}" for k, n in distinct.most_common(5))
            notes.append(f"- {b}: {count} warning/error lines in its logs — {top}")
    return notes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--machine", default="{}")
    ap.add_argument("--settings", default="{}")
    ap.add_argument("--brokers", default=",".join(BROKERS))
    ap.add_argument("--peers", default="{}")
    ap.add_argument("--logs", default="")
    args = ap.parse_args()

    machine = json.loads(args.machine)
    settings = json.loads(args.settings)
    brokers = [b for b in args.brokers.split(",") if b]
    extra_peers = json.loads(args.peers or "{}")

    by = collections.defaultdict(lambda: collections.defaultdict(list))
    failures = []
    with open(args.results) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            by[rec["broker"]][rec["scenario_id"]].append(rec)
            if "error" in rec:
                failures.append(rec)

    peers = [b for b in brokers if b != "coolpy7"]
    cols = brokers + ([f"coolpy7/{p}" for p in peers] if "coolpy7" in brokers else [])

    out = []
    out.append("## " + " vs ".join(TITLES.get(b, b) for b in brokers))
    out.append("")
    if machine:
        out.append(f"- date: {machine.get('date', '')}")
        out.append(f"- machine: {machine.get('nproc', '?')} CPUs, {machine.get('cpu', '?')}, "
                   f"{machine.get('mem', '?')} RAM, Linux {machine.get('kernel', '?')}, "
                   f"open files {machine.get('nofile', '?')}")
        vers = []
        if machine.get("coolpy7"):
            c = machine["coolpy7"]
            if machine.get("commit"):
                c += f" ({machine['commit']})"
            vers.append(c)
        for k in ("mosquitto", "rumqttd"):
            if machine.get(k):
                vers.append(machine[k])
        if vers:
            out.append(f"- brokers: {'; '.join(vers)}")
    for name, command in extra_peers.items():
        if name in brokers:
            out.append(f"- {name} (compare.sh --peer): `{command}`")
    if settings:
        out.append(f"- load: {settings.get('size', 64)}-byte payloads, {settings.get('secs')} s "
                   f"measured after {settings.get('warmup')} s warm-up ({settings.get('drain')} s "
                   f"drain), {settings.get('conns')} idle connections, median of "
                   f"{settings.get('runs')} run(s){', quick pass' if settings.get('quick') else ''}")
    if settings.get("mqtt", "3") != "3":
        out.append(f"- MQTT versions: {settings['mqtt']} (rows starting with `v5` ran over "
                   "MQTT 5.0: topic aliases on publishes, Receive Maximum = the publisher's "
                   "window)")
    ran = {s for runs in by.values() for s in runs}
    over = [t for t in TRANSPORTS if any(s.removesuffix("-v5").endswith("-" + t) for s in ran)]
    if over:
        out.append(f"- transports: rows starting with {', '.join(f'`{t}`' for t in over)} ran "
                   "over MQTT over TLS (`tls`), WebSocket (`ws`) or WebSocket over TLS (`wss`); "
                   "both brokers served the same certificate (EC P-256, made for the run) to the "
                   "bench's rustls client, without session resumption; handshakes without "
                   "verifying the certificate on the bench's side")
        agreed = {b: sorted({r["tls"] for runs in by.get(b, {}).values() for r in runs
                             if isinstance(r.get("tls"), str)}) for b in brokers}
        agreed = {b: v for b, v in agreed.items() if v}
        if agreed:
            out.append("- TLS agreed (version, cipher suite, key exchange): " + "; ".join(
                f"{b} {' / '.join(v)}" for b, v in agreed.items()))
    out.append("- ↑ higher is better, ↓ lower is better; ratios are coolpy7 ÷ peer")
    out.append("")
    out.append("| figure | " + " | ".join(cols) + " |")
    out.append("|---|" + "---:|" * len(cols))
    any_partial = False
    for label, better, kind, spec in with_v5(figures(settings)):
        cells = {b: cell_for(kind, spec, by.get(b, {})) for b in brokers}
        if all(c is None for c in cells.values()):
            continue  # scenario not part of this comparison
        any_partial |= any(c is not None and c.partial for c in cells.values())
        row = [fmt_value(label, cells[b], kind) for b in brokers]
        if "coolpy7" in brokers:
            row += [fmt_ratio(cells["coolpy7"], cells[p]) for p in peers]
        arrow = "↑" if better == "high" else "↓"
        out.append(f"| {label} {arrow} | " + " | ".join(row) + " |")
    out.append("")
    if any_partial:
        out.append("`*` some runs of this figure failed or did not report it; the value is "
                   "from the others.")
        out.append("")
    ran_v5 = any(s.endswith("-v5") for runs in by.values() for s in runs)
    if ran_v5 and "rumqttd" in brokers:
        out.append("rumqttd was not run on the v5 rows (compare.sh configures only its MQTT 3.1.1 "
                   "listener).")
        out.append("")
    named = [p for p in extra_peers if p in brokers]
    if named and any(s.endswith("-v5") or "-" + t in s or any(
            a in s for a in ("jwt", "password", "pbkdf2", "rules"))
            for s in ran for t in TRANSPORTS):
        out.append(f"{', '.join(named)} (--peer) ran only the MQTT 3.1.1 scenarios over TCP "
                   "without access control.")
        out.append("")
    if any(s.removesuffix("-v5").split("-")[0] in ("handshakes", "fanin")
           and any(a in s for a in ("jwt", "password", "pbkdf2", "rules")) for s in ran):
        out.append("Access control: coolpy7 remembers a verified password for 5 minutes (a "
                   "keyed digest), so one user connecting over and over is hashed once; "
                   "Mosquitto hashes every CONNECT. The `a new user each` rows name another user "
                   "in every CONNECT (all in the file with the same hash), so every check is a "
                   "first connect. Mosquitto was not run with JWT (it needs a plugin). The rules "
                   "rows: 999 rules the bench's topics do not match, then `allow all #`.")
        reused = sorted({(b, s) for b, runs in by.items() for s, recs in runs.items() for r in recs
                         if isinstance(r.get("auth"), dict) and r["auth"].get("users_reused")})
        if reused:
            out.append("User names ran out (some were used twice, which coolpy7 may have "
                       "answered from its cache) in: " + ", ".join(f"{b} {s}" for b, s in reused)
                       + "; raise AUTH_USERS.")
        out.append("")
    if failures:
        out.append("Failed runs:")
        for r in failures:
            out.append(f"- {r['broker']} {r['scenario_id']} run {r['run']}: {r['error']}")
        out.append("")
    notes = log_notes(args.logs, brokers)
    if notes:
        out.append("Broker logs:")
        out.extend(notes)
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
