"""A minimal hole-punching driver for lab namespaces: one real UDP socket plus a PunchCore.

Usage (inside a namespace)::

    python tests/netlab/punch_probe.py --port 40001 --peer 203.0.113.12:40002 \
        [--peer-nat dependent] [--deadline 30] [--linger 2]

It binds ``0.0.0.0:PORT``, punches toward the peer's public candidate and prints JSON lines:
``ready`` (once bound), ``validated`` (address, RTT, seconds since start, probes and spray
probes sent so far), ``gave_up``, and finally ``done`` with the core's counters and
``budget_used``.  After a validation it keeps answering for ``--linger`` seconds so the peer
can validate too, then exits 0; after giving up (or at ``--deadline``) it exits 0 as well:
the outcome is in the output, not the exit status.  The MAC key is the fixed test key of
``params_from_master(bytes(32))``: nothing secret.

Time: the loop uses ``time.monotonic`` for the core's ``now`` and ``time.time`` once for the
wall offset, as a trio driver would with ``trio.current_time``.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from typing import Any

from p2pd.derive import params_from_master
from p2pd.subkeys import punch_key
from transports.punch import GaveUp, PunchCore, Validated

#: Largest datagram read: far above a 44-byte frame, so nothing is truncated.
RECV_SIZE = 2048
#: Longest sleep when the core has no timer (the deadline is checked this often).
IDLE_POLL = 0.1


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peer", type=parse_addr, required=True)
    parser.add_argument("--peer-nat", choices=("independent", "dependent"))
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--linger", type=float, default=2.0)
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    sock.setblocking(False)
    start = time.monotonic()
    core = PunchCore(
        punch_key(params_from_master(bytes(32)).tag_key), wall_offset=time.time() - start
    )
    emit("ready", port=sock.getsockname()[1])
    core.add_remote(args.peer, "offer", 0.0, peer_nat=args.peer_nat)
    stop_at = args.deadline
    while (now := time.monotonic() - start) < stop_at:
        for data, addr in core.datagrams_to_send(now):
            try:
                sock.sendto(data, addr)
            except OSError as exc:
                core.counters[f"send_error_{exc.errno}"] += 1
        while (event := core.next_event()) is not None:
            sent = {"probes_sent": core.counters["probes_sent"]}
            sent["spray_sent"] = core.counters["spray_sent"]
            if isinstance(event, Validated):
                emit("validated", addr=list(event.addr), rtt=event.rtt, source=event.source,
                     t=now, **sent)  # fmt: skip
                stop_at = min(stop_at, now + args.linger)
            elif isinstance(event, GaveUp):
                emit("gave_up", t=now, **sent)
                stop_at = now
        timer = core.get_timer()
        wait = IDLE_POLL if timer is None else max(0.0, timer - now)
        ready, _, _ = select.select([sock], [], [], min(wait, IDLE_POLL, stop_at - now))
        if ready:
            try:
                data, (host, port, *_) = sock.recvfrom(RECV_SIZE)
            except OSError as exc:
                core.counters[f"recv_error_{exc.errno}"] += 1
                continue
            core.receive_untrusted(data, (host, port), time.monotonic() - start)
    emit("done", t=time.monotonic() - start, counters=dict(core.counters),
         budget_used=core.budget_used("peer"))  # fmt: skip
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
