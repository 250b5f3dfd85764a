"""``p2pd send``, ``listen`` and ``chat``: a node in-process, driven for one user task.

Output discipline: peer messages on stdout, one per line (or one JSON object per event
with ``--json``); status on stderr.  ``send`` exits 0 once its message is acknowledged
and — when the peer is a ``send`` too — the peer's message has arrived, so two people
running ``send`` at each other both see the other's message.  After that the channel is
closed cleanly (bounded by :data:`CLOSE_LINGER`) so the last acknowledgements get out.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import trio

from p2pd import messages
from p2pd.errors import P2pdError, single_errors
from p2pd.node import Delivered, MessageIn, Node, PathChanged, PeerDown, PeerUp, TorProgress

#: Exit code after SIGTERM (128 + 15, as shells report it).
EXIT_TERMINATED = 143
#: Longest wait for the clean close after a ``send`` finished (the peer's last ACKs).
CLOSE_LINGER = 2.0
#: Longest wait for our public addresses (STUN, relays, port mapping) before an offer.
OFFER_GATHER = 4.0


class NoPeer(P2pdError):
    """No peer answered within the timeout."""

    exit_code = 3


@dataclass(slots=True)
class Output:
    """Where events go: stdout for messages and results, stderr for status."""

    json_mode: bool
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr

    def event(self, obj: dict[str, Any], text: str | None, *, status: bool = False) -> None:
        if self.json_mode:
            print(json.dumps(obj, sort_keys=True, ensure_ascii=False), file=self.out, flush=True)
        elif text is not None:
            print(text, file=self.err if status else self.out, flush=True)


def _peer_up(output: Output, event: PeerUp) -> None:
    output.event(
        {
            "event": "connected",
            "peer": event.fingerprint,
            "path": event.path,
            "addr": f"{event.addr[0]}:{event.addr[1]}",
            "elapsed_ms": round(event.elapsed * 1000, 1),
        },
        f"p2pd: connected to {event.fingerprint} via {event.path} "
        f"({event.addr[0]}:{event.addr[1]}) in {event.elapsed * 1000:.0f} ms",
        status=True,
    )


def _path_changed(output: Output, event: PathChanged | TorProgress) -> None:
    if isinstance(event, TorProgress):
        obj: dict[str, Any] = {
            "event": "tor",
            "state": event.state,
            "elapsed_ms": round(event.elapsed * 1000, 1),
        }
        state = event.state.replace("_", " ")
        if event.percent is not None:
            obj["percent"] = event.percent
            state = f"{state} {event.percent}%"
        output.event(obj, f"p2pd: tor {state} after {event.elapsed:.1f} s", status=True)
        return
    output.event(
        {
            "event": "path",
            "peer": event.fingerprint,
            "path": event.path,
            "from": event.old_path,
            "addr": f"{event.addr[0]}:{event.addr[1]}",
        },
        f"p2pd: {event.fingerprint} now via {event.path} (was {event.old_path})",
        status=True,
    )


def _message(output: Output, event: MessageIn) -> bool:
    """Print a text message; True if it was one."""
    if event.message.kind != "text":
        return False
    body = str(event.message.fields["body"])
    output.event({"event": "message", "peer": event.fingerprint, "text": body}, body)
    return True


def _ready(node: Node, output: Output) -> None:
    output.event(
        {"event": "listening", "port": node.port, "fingerprint": node.identity.fingerprint},
        f"p2pd: listening on UDP port {node.port} as {node.identity.fingerprint}",
        status=True,
    )


async def _with_signals(node: Node, body: Callable[[], Any]) -> Any:
    """Run the node and ``body`` together; SIGTERM cancels both cleanly."""
    result: list[Any] = []

    async def watch_signals(cancel: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                cancel.cancel()

    failure: list[P2pdError] = []
    # The node's own lone failure (tor missing, an invite expired) is raised as itself too.
    with single_errors():
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            nursery.start_soon(watch_signals, nursery.cancel_scope)
            try:
                result.append(await body())
            except P2pdError as exc:  # re-raised bare, not inside the nursery's ExceptionGroup
                failure.append(exc)
            nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return result[0] if result else EXIT_TERMINATED


async def run_send(node: Node, text: str, timeout: float, output: Output) -> int:
    async def body() -> int:
        target: bytes | None = None
        text_id = -1
        delivered = False
        peer_role: str | None = None
        peer_done = False
        with trio.move_on_after(timeout):
            async for event in node.events:
                if isinstance(event, PeerUp) and target is None:
                    target = event.peer_id
                    _peer_up(output, event)
                    node.send_message(target, messages.hello("send"))
                    text_id = node.send_message(target, messages.text(text))
                    node.send_message(target, messages.done())
                elif isinstance(event, MessageIn) and event.peer_id == target:
                    if event.message.kind == "hello":
                        peer_role = str(event.message.fields.get("role"))
                    elif event.message.kind == "done":
                        peer_done = True
                    else:
                        _message(output, event)
                elif isinstance(event, Delivered) and event.message_id == text_id:
                    delivered = True
                    output.event(
                        {
                            "event": "delivered",
                            "path": event.path,
                            "peer": event.fingerprint,
                            "rtt_ms": round(event.rtt * 1000, 2),
                        },
                        f"p2pd: delivered to {event.fingerprint} via {event.path} "
                        f"(rtt {event.rtt * 1000:.1f} ms)",
                        status=True,
                    )
                elif isinstance(event, (PathChanged, TorProgress)):
                    _path_changed(output, event)
                elif isinstance(event, PeerDown) and event.peer_id == target and not delivered:
                    target = None  # it went away before acknowledging: wait for another
                if delivered and peer_role is not None and (peer_role != "send" or peer_done):
                    break
        if not delivered:
            tor = node.config.tor
            if tor is not None and tor.invite is not None:
                raise NoPeer(
                    f"no peer answered within {timeout:g} s: is the inviter still running, "
                    "and was the invite not used by someone else?"
                )
            raise NoPeer(
                f"no peer answered within {timeout:g} s: is the other side running "
                "with the same passphrase, on a network it can reach?"
            )
        assert target is not None
        node.close_peer(target)
        with trio.move_on_after(CLOSE_LINGER):
            async for event in node.events:
                if isinstance(event, PeerDown) and event.peer_id == target:
                    break
        return 0

    return int(await _with_signals(node, body))


async def run_listen(node: Node, count: int | None, timeout: float | None, output: Output) -> int:
    async def body() -> int:
        _ready(node, output)
        return await _listen(node, count, timeout, output)

    return int(await _with_signals(node, body))


async def run_offer(node: Node, ttl: float, listen: bool, count: int | None, output: Output) -> int:
    """``p2pd offer``: gather our addresses, print the offer (text and QR), then listen."""
    from p2pd.offer import make_offer  # noqa: PLC0415
    from p2pd.qr import render_qr  # noqa: PLC0415

    async def body() -> int:
        await node.gather_addresses(OFFER_GATHER)
        candidates = node.own_candidates()
        text = make_offer(
            node.params.tag_key,
            candidates,
            now_wall=time.time(),
            ttl=ttl,
            resume=node.identity.public,  # the hybrid form: the joiner talks to us only
        )
        shown = [f"{c.path} {c.addr[0]}:{c.addr[1]}" for c in candidates]
        if output.json_mode:
            output.event({"event": "offer", "offer": text, "ttl_s": ttl, "candidates": shown}, None)
        else:
            print(render_qr(text), file=output.out, flush=True)
            print(text, file=output.out, flush=True)
            print(
                f"p2pd: offer valid {ttl:g} s; addresses: {', '.join(shown)}",
                file=output.err,
                flush=True,
            )
        if not listen:
            return 0
        _ready(node, output)
        return await _listen(node, count, None, output)

    return int(await _with_signals(node, body))


async def run_invite(
    node: Node,
    text: str,
    expires_at: float,
    count: int | None,
    output: Output,
    *,
    qr: bool = True,
    chat: TextIO | None = None,
) -> int:
    """``p2pd invite``: print the invite (text and QR) on stdout, serve its onion until one
    peer completes the handshake (then the onion is withdrawn), and listen to that peer,
    or with ``chat`` (the lines to send) chat with it as ``p2pd chat`` does."""
    from p2pd.invite import InviteUnusedError  # noqa: PLC0415
    from p2pd.qr import render_qr  # noqa: PLC0415

    async def body() -> int:
        ttl = max(0.0, expires_at - time.time())
        if output.json_mode:
            obj = {"event": "invite", "invite": text, "expires_at": expires_at, "ttl_s": ttl}
            output.event(obj, None)
        else:
            if qr:
                print(render_qr(text), file=output.out, flush=True)
            print(text, file=output.out, flush=True)
        until = time.strftime("%H:%M:%S", time.localtime(expires_at))
        print(
            f"p2pd: invite valid {ttl:.0f} s (until {until}) for one peer, once, through Tor; "
            "whoever holds it until then can connect: pass it on privately",
            file=output.err,
            flush=True,
        )
        peer: PeerUp | None = None
        with trio.move_on_after(ttl):
            async for event in node.events:
                if isinstance(event, PeerUp):
                    peer = event
                    break
                if isinstance(event, (PathChanged, TorProgress)):
                    _path_changed(output, event)
        if peer is None:
            raise InviteUnusedError("the invite expired unused")
        assert node.tor is not None
        node.tor.spend()  # one peer only: the onion is withdrawn
        if chat is not None:
            return await _chat(node, output, chat, peer)
        _peer_up(output, peer)
        node.send_message(peer.peer_id, messages.hello("listen"))
        return await _listen(node, count, None, output)

    return int(await _with_signals(node, body))


async def _listen(node: Node, count: int | None, timeout: float | None, output: Output) -> int:
    """Print messages as they arrive until ``count`` of them or the timeout."""
    received = 0
    with trio.move_on_after(timeout if timeout is not None else float("inf")):
        async for event in node.events:
            if isinstance(event, PeerUp):
                _peer_up(output, event)
                node.send_message(event.peer_id, messages.hello("listen"))
            elif isinstance(event, (PathChanged, TorProgress)):
                _path_changed(output, event)
            elif isinstance(event, MessageIn) and _message(output, event):
                received += 1
                if count is not None and received >= count:
                    break
            elif isinstance(event, PeerDown):
                output.event(
                    {
                        "event": "disconnected",
                        "peer": event.fingerprint,
                        "reason": event.reason,
                    },
                    f"p2pd: {event.fingerprint} left ({event.reason})",
                    status=True,
                )
    if count is not None and received < count:
        raise NoPeer(f"received {received} of {count} messages before the timeout")
    with trio.move_on_after(CLOSE_LINGER / 4):
        await trio.sleep_forever()  # let the last acknowledgements out
    return 0


async def run_chat(node: Node, output: Output, stdin: TextIO = sys.stdin) -> int:
    """Lines typed go to every connected peer (and to peers that connect later);
    at end of input, wait until every line reached at least one peer, then close."""

    async def body() -> int:
        _ready(node, output)
        return await _chat(node, output, stdin, None)

    return int(await _with_signals(node, body))


async def _chat(node: Node, output: Output, stdin: TextIO, first: PeerUp | None) -> int:
    """:func:`run_chat` inside the signal handling; ``first`` is a peer already up (the
    invite's), greeted as if it had just connected."""
    peers: set[bytes] = set()
    typed: list[str] = []
    #: (peer, message id) -> index of the typed line it carries, until delivered.
    pending: dict[tuple[bytes, int], int] = {}
    #: Indexes of typed lines that reached at least one peer.
    reached: set[int] = set()
    eof = trio.Event()

    def deliver(peer_id: bytes, index: int) -> None:
        message_id = node.send_message(peer_id, messages.text(typed[index]))
        pending[(peer_id, message_id)] = index

    def done() -> bool:
        """End of input, and every line reached a peer (or is on its way to one)."""
        if not eof.is_set() or pending:
            return False
        return bool(peers) or len(reached) == len(typed)

    async def read_lines() -> None:
        while True:
            line = await trio.to_thread.run_sync(stdin.readline, abandon_on_cancel=True)
            if not line:
                eof.set()
                node.kick()
                return
            typed.append(line.rstrip("\n"))
            for peer_id in list(peers):
                deliver(peer_id, len(typed) - 1)

    def greet(event: PeerUp) -> None:
        peers.add(event.peer_id)
        _peer_up(output, event)
        node.send_message(event.peer_id, messages.hello("chat"))
        for index in range(len(typed)):
            deliver(event.peer_id, index)

    if first is not None:
        greet(first)
    async with trio.open_nursery() as inner:
        inner.start_soon(read_lines)
        async for event in node.events:
            if isinstance(event, PeerUp):
                greet(event)
            elif isinstance(event, MessageIn):
                _message(output, event)
            elif isinstance(event, (PathChanged, TorProgress)):
                _path_changed(output, event)
            elif isinstance(event, Delivered):
                key = (event.peer_id, event.message_id)
                if key in pending:
                    reached.add(pending.pop(key))
            elif isinstance(event, PeerDown):
                peers.discard(event.peer_id)
                for key in [k for k in pending if k[0] == event.peer_id]:
                    del pending[key]
            if done():
                break
        inner.cancel_scope.cancel()
    await _close_all(node, peers)
    return 0


async def _close_all(node: Node, peers: set[bytes]) -> None:
    """Close every peer and wait (a little) until each says it is down."""
    for peer_id in peers:
        node.close_peer(peer_id)
    with trio.move_on_after(CLOSE_LINGER):
        while peers:
            event = await node.events.receive()
            if isinstance(event, PeerDown):
                peers.discard(event.peer_id)


async def run_relay(bind: tuple[str, int], max_bytes: int | None, output: Output) -> int:
    """``p2pd relay``: serve until SIGTERM or Ctrl-C; print where, and the counters at exit."""
    from p2pd.relayd import RelayConfig, RelayRunning, serve_relay  # noqa: PLC0415

    config = RelayConfig() if max_bytes is None else RelayConfig(bytes_per_window=max_bytes)
    running: RelayRunning | None = None
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve_relay, bind, config)
        host, port = running.addr
        output.event(
            {"event": "relay", "addr": f"{host}:{port}"},
            f"p2pd: relay listening on {host} port {port} (UDP and TCP)",
            status=True,
        )
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    if running is not None:
        counters = dict(running.counters())
        output.event(
            {"event": "stopped", "counters": counters},
            "p2pd: relay stopped: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())),
            status=True,
        )
    return EXIT_TERMINATED
