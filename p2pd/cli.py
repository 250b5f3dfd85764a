"""The ``p2pd`` command line: one clear line per failure, a distinct exit code per kind.

Output discipline: results on stdout (``--json`` gives one JSON object per line), status
and errors on stderr, never a secret in either.  The process title is rewritten before
anything else runs, so a passphrase typed as an argument leaves the process list at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from p2pd import __version__
from p2pd.cli_tor import add_tor_options, tor_settings
from p2pd.errors import LocalError, P2pdError
from p2pd.passphrase import hide_arguments

#: Exit codes, one per kind of outcome (documented in README.md).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_PEER = 3
EXIT_INTERRUPTED = 130
#: Seconds ``p2pd stop`` waits for the daemon to exit.
STOP_WAIT = 10.0
#: Default seconds ``send`` waits for a peer (``--timeout``).
DEFAULT_TIMEOUT = 60.0
#: The same with Tor: bootstrapping takes 10-30 s, a meeting at the onion 5-90 s.
TOR_DEFAULT_TIMEOUT = 300.0
#: Seconds a ``send --invite`` gets past the invite's expiry (a connect in the last moment
#: still needs its handshake); the joiner stops *connecting* at the expiry.
INVITE_GRACE = 60.0
#: Words in a passphrase made by ``p2pd phrase``: 5 x 12.9 = 64.6 bits.
DEFAULT_PHRASE_WORDS = 5
#: Fewest words ``p2pd phrase`` makes: 4 x 12.9 = 51.7 bits, still above the strength floor.
MIN_PHRASE_WORDS = 4

Handler = Callable[[argparse.Namespace], int]


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj, sort_keys=True) if args.json else text, flush=True)


def _passphrase(args: argparse.Namespace) -> str:
    from p2pd.passphrase import read_passphrase  # noqa: PLC0415

    return read_passphrase(args.passphrase, passphrase_file=args.passphrase_file).passphrase


def cmd_derive(args: argparse.Namespace) -> int:
    from p2pd.derive import derive  # noqa: PLC0415
    from transports.onion import OnionIdentity  # noqa: PLC0415

    params = derive(_passphrase(args))
    # Public like the port: both peers publish and dial it (see transports.onion).
    public = {**params.public(), "onion": OnionIdentity.from_seed(params.onion_seed).address}
    text = "\n".join(f"{key}: {value}" for key, value in public.items())
    _emit(args, public, text)
    return EXIT_OK


def cmd_identity(args: argparse.Namespace) -> int:
    from p2pd.identity import load_or_create  # noqa: PLC0415
    from p2pd.paths import resolve_state_dir  # noqa: PLC0415

    state_dir = resolve_state_dir(args.state_dir)
    ident = load_or_create(state_dir)
    obj = {"fingerprint": ident.fingerprint, "public_key": ident.public.hex()}
    _emit(args, obj, ident.fingerprint)
    return EXIT_OK


def cmd_phrase(args: argparse.Namespace) -> int:
    from p2pd.passphrase import generate  # noqa: PLC0415

    if args.words < MIN_PHRASE_WORDS:
        raise LocalError(f"--words must be at least {MIN_PHRASE_WORDS}")
    phrase = generate(args.words)
    _emit(args, {"passphrase": phrase}, phrase)
    return EXIT_OK


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interface",
        action="append",
        metavar="NAME",
        dest="interfaces",
        help="LAN discovery only on this interface (repeatable; default: all)",
    )
    parser.add_argument("--port", type=int, help="UDP port (default: derived from the passphrase)")
    parser.add_argument("--no-mdns", action="store_true", help="no mDNS announcement or browsing")
    parser.add_argument("--no-beacon", action="store_true", help="no LAN broadcast beacons")
    parser.add_argument(
        "--no-daemon", action="store_true", help="run a node in this process even if a daemon runs"
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="also try this address directly, over UDP and TCP (repeatable)",
    )
    parser.add_argument(
        "--stun",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="STUN server: public address and NAT type (repeatable; default: none)",
    )
    parser.add_argument(
        "--assist",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="assist relay (p2pd relay): rendezvous, punching, relaying (repeatable)",
    )
    parser.add_argument("--offer", metavar="OFFER", help="connect using an offer from p2pd offer")
    parser.add_argument(
        "--no-upnp", action="store_true", help="do not ask the gateway for a port mapping"
    )
    parser.add_argument("--no-tcp", action="store_true", help="no TCP listener or TCP fallback")
    add_tor_options(parser)


def _resolve(addr: tuple[str, int], option: str) -> tuple[str, int]:
    """``addr`` with its host name looked up (relays and STUN servers are matched by IP)."""
    import ipaddress  # noqa: PLC0415
    import socket  # noqa: PLC0415

    try:
        ipaddress.ip_address(addr[0])
        return addr
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(addr[0], addr[1], type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise LocalError(f"{option}: cannot resolve {addr[0]!r}: {exc}") from None
    return str(infos[0][4][0]), addr[1]


def _parse_target(
    text: str, option: str = "--target", *, any_port: bool = False
) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    lowest = 0 if any_port else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise LocalError(f"{option} must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _make_node(args: argparse.Namespace, passphrase: str | None, *, invite: Any = None) -> Any:
    """The node of ``passphrase``, or of ``invite`` (``(Params, TorInvite)``: Tor only)."""
    from p2pd.derive import derive  # noqa: PLC0415
    from p2pd.identity import load_or_create  # noqa: PLC0415
    from p2pd.node import Node, NodeConfig  # noqa: PLC0415
    from p2pd.paths import resolve_state_dir  # noqa: PLC0415

    tor = tor_settings(args, None if invite is None else invite[1])
    only = tor is not None and tor.only
    params = invite[0] if invite is not None else derive(passphrase or "")
    identity = load_or_create(resolve_state_dir(args.state_dir))
    config = NodeConfig(
        port=args.port,
        interfaces=args.interfaces,
        beacons=not (args.no_beacon or only),
        mdns=not (args.no_mdns or only),
        targets=tuple(_parse_target(t) for t in args.target),
        stun=tuple(_resolve(_parse_target(t, "--stun"), "--stun") for t in args.stun),
        assists=tuple(_resolve(_parse_target(t, "--assist"), "--assist") for t in args.assist),
        portmap=not (args.no_upnp or only),
        tcp=not (args.no_tcp or only),
        tor=tor,
    )
    if getattr(args, "offer", None):
        import dataclasses  # noqa: PLC0415
        import time  # noqa: PLC0415

        from p2pd.offer import RESUME_KEY_SIZE, parse_offer_untrusted  # noqa: PLC0415

        offer = parse_offer_untrusted(args.offer, params.tag_key, now_wall=time.time())
        # The hybrid form's resume token is the offering node's static key: talk to it only.
        pinned = offer.resume if offer.resume and len(offer.resume) == RESUME_KEY_SIZE else None
        config = dataclasses.replace(config, offer=offer.candidates, expect_peer=pinned)
    return Node(params, identity, config)


def _joined(args: argparse.Namespace) -> Any:
    """``(Params, TorInvite)`` of ``--invite`` (``-`` reads it from stdin), or None."""
    text = getattr(args, "invite", None)
    if text is None:
        return None
    import time  # noqa: PLC0415

    from p2pd.invite import parse_invite_untrusted  # noqa: PLC0415
    from p2pd.node_types import TorInvite  # noqa: PLC0415

    if getattr(args, "passphrase", None) or getattr(args, "passphrase_file", None):
        raise LocalError("--invite replaces the passphrase: drop the passphrase")
    if text == "-":
        text = sys.stdin.readline()
    invite = parse_invite_untrusted(text, now_wall=time.time())
    return invite.params(), TorInvite(address=invite.address, expires_at=invite.expires_at)


def _invite_message(args: argparse.Namespace) -> str:
    """The message of ``send --invite``: MSG, --message-file, or stdin."""
    words: list[str] = args.words
    if len(words) > 1:
        raise LocalError("send --invite takes one MSG (no passphrase); quote spaces")
    if args.message_file is not None:
        if words:
            raise LocalError("give the message either as MSG or with --message-file, not both")
        return _read_message_file(args.message_file)
    if words:
        return words[0]
    if args.invite != "-" and not sys.stdin.isatty():
        return sys.stdin.read()
    raise LocalError("send needs a message: p2pd send --invite INVITE MSG")


def _read_message_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalError(f"cannot read message file {path}: {exc}") from None


def _send_inputs(args: argparse.Namespace) -> tuple[str, str]:
    """(passphrase, message) from ``send``'s positionals and the other sources."""

    from p2pd.passphrase import PASSPHRASE_ENV, read_passphrase  # noqa: PLC0415

    words: list[str] = args.words
    if args.message_file is not None:
        from_file = _read_message_file(args.message_file)
        if len(words) > 1:
            raise LocalError("give the message either as MSG or with --message-file, not both")
        phrase_arg = words[0] if words else None
        return read_passphrase(
            phrase_arg, passphrase_file=args.passphrase_file
        ).passphrase, from_file
    if len(words) > 2:
        raise LocalError("send takes PASSPHRASE and MSG; quote a message with spaces")
    if len(words) == 2:
        phrase_arg, message = words
    elif len(words) == 1 and (args.passphrase_file or os.environ.get(PASSPHRASE_ENV)):
        phrase_arg, message = None, words[0]
    elif len(words) == 1 and words[0] != "-" and not sys.stdin.isatty():
        phrase_arg, message = words[0], sys.stdin.read()
    else:
        raise LocalError("send needs a message: p2pd send PASSPHRASE MSG")
    passphrase = read_passphrase(phrase_arg, passphrase_file=args.passphrase_file).passphrase
    return passphrase, message


def _daemon(args: argparse.Namespace) -> Any:
    """The running daemon of this state directory, unless --no-daemon; else None.  A
    command given Tor options runs its own node (the daemon's may not use Tor, and with
    --tor-only it must not be used); so does one with an invite."""
    if getattr(args, "no_daemon", False) or getattr(args, "invite", None) is not None:
        return None
    if tor_settings(args) is not None:
        return None
    from p2pd.apiclient import DaemonClient  # noqa: PLC0415
    from p2pd.paths import resolve_state_dir  # noqa: PLC0415

    return DaemonClient.discover(resolve_state_dir(args.state_dir))


def _delivered_line(args: argparse.Namespace, result: dict[str, Any]) -> None:
    obj = {
        "event": "delivered",
        "path": result.get("path"),
        "peer": result.get("peer"),
        "rtt_ms": result.get("rtt_ms"),
    }
    if args.json:
        print(json.dumps(obj, sort_keys=True), flush=True)
    else:
        print(
            f"p2pd: delivered to {obj['peer']} via {obj['path']} (through the daemon)",
            file=sys.stderr,
            flush=True,
        )


def cmd_send(args: argparse.Namespace) -> int:
    import trio  # noqa: PLC0415

    from p2pd.commands import Output, run_send  # noqa: PLC0415

    joined = _joined(args)
    if joined is not None:
        import time  # noqa: PLC0415

        message = _invite_message(args)
        node = _make_node(args, None, invite=joined)
        remaining = max(0.0, joined[1].expires_at - time.time())
        timeout = args.timeout if args.timeout is not None else remaining + INVITE_GRACE
        return int(trio.run(run_send, node, message, timeout, Output(args.json)))
    passphrase, message = _send_inputs(args)
    client = _daemon(args)
    if client is not None:
        session, _ = client.join(passphrase)
        _delivered_line(args, client.send(session["id"], message, args.timeout or DEFAULT_TIMEOUT))
        return EXIT_OK
    node = _make_node(args, passphrase)
    timeout = args.timeout
    if timeout is None:
        timeout = DEFAULT_TIMEOUT if node.config.tor is None else TOR_DEFAULT_TIMEOUT
    return int(trio.run(run_send, node, message, timeout, Output(args.json)))


def cmd_listen(args: argparse.Namespace) -> int:
    import trio  # noqa: PLC0415

    from p2pd.commands import Output, run_listen  # noqa: PLC0415

    joined = _joined(args)
    if joined is not None:
        node = _make_node(args, None, invite=joined)
        return int(trio.run(run_listen, node, args.count, args.timeout, Output(args.json)))
    passphrase = _passphrase(args)
    client = _daemon(args)
    if client is not None:
        return _listen_through(client, args, passphrase)
    node = _make_node(args, passphrase)
    return int(trio.run(run_listen, node, args.count, args.timeout, Output(args.json)))


def _listen_through(client: Any, args: argparse.Namespace, passphrase: str) -> int:
    """``listen`` via the daemon: print the session's message events as they come."""
    from p2pd.commands import NoPeer  # noqa: PLC0415

    session, created = client.join(passphrase)
    received = 0
    # A session this command created is replayed from its start, so a message that
    # arrived while the event stream was being opened is not missed.
    for event in client.events(session["id"], since=0 if created else None):
        if event.get("event") != "message":
            continue
        received += 1
        if args.json:
            print(json.dumps(event, sort_keys=True, ensure_ascii=False), flush=True)
        else:
            print(event.get("text", ""), flush=True)
        if args.count is not None and received >= args.count:
            return EXIT_OK
    raise NoPeer("the daemon closed the event stream")


def cmd_status(args: argparse.Namespace) -> int:
    client = _daemon(args)
    if client is None:
        raise LocalError("no daemon is running on this state directory (start one: p2pd daemon)")
    status = client.status()
    if args.json:
        print(json.dumps(status, sort_keys=True), flush=True)
        return EXIT_OK
    daemon = status.get("daemon", {})
    print(
        f"daemon pid {daemon.get('pid')}  api {daemon.get('api')}  "
        f"up {daemon.get('uptime_s', 0):.0f} s"
    )
    rows = [("SESSION", "PORT", "PEER", "PATH", "ADDRESS")]
    for session in status.get("sessions", []):
        peers = session.get("peers") or [{}]
        for peer in peers:
            rows.append(
                (
                    session["id"][:16],
                    str(session.get("port", "")),
                    peer.get("fingerprint", "-"),
                    peer.get("path", "-"),
                    peer.get("addr", "-"),
                )
            )
    for session in status.get("sessions", []):
        print(f"session {session['id'][:16]}: {_wan_line(session.get('wan') or {})}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    totals: dict[str, int] = {}
    for session in status.get("sessions", []):
        for key, value in session.get("counters", {}).items():
            totals[key] = totals.get(key, 0) + int(value)
    if totals:
        print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())))
    return EXIT_OK


def _wan_line(wan: dict[str, Any]) -> str:
    """One line of a session's WAN state: NAT type, mapping, relays."""
    nat = wan.get("nat") or {}
    parts = [f"NAT {nat.get('mapping', 'unknown')}" if nat else "NAT not probed (no --stun)"]
    if nat.get("reflexive"):
        parts.append(f"public {nat['reflexive']}")
    portmap = wan.get("portmap") or {}
    if portmap:
        parts.append(f"mapping {portmap.get('state')} {portmap.get('external') or ''}".rstrip())
    relays = wan.get("relays") or []
    if relays:
        up = sum(1 for r in relays if r.get("udp") or r.get("tcp"))
        parts.append(f"assists {up}/{len(relays)} registered")
    tor = wan.get("tor") or {}
    if wan.get("tor_only"):
        parts = [f"Tor only (nothing leaves outside Tor), tor {tor.get('state')}"]
    elif tor:
        parts.append(f"tor {tor.get('state')}")
    return ", ".join(parts)


def cmd_stop(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from p2pd.apiclient import alive  # noqa: PLC0415

    client = _daemon(args)
    if client is None:
        raise LocalError("no daemon is running on this state directory")
    client.shutdown()
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        if not alive(client.pid):
            print(f"p2pd: daemon (pid {client.pid}) stopped", file=sys.stderr)
            return EXIT_OK
        time.sleep(0.05)
    raise P2pdError(f"the daemon (pid {client.pid}) did not stop within {STOP_WAIT:g} s")


def cmd_chat(args: argparse.Namespace) -> int:
    import trio  # noqa: PLC0415

    from p2pd.commands import Output, run_chat  # noqa: PLC0415

    joined = _joined(args)
    node = _make_node(args, None if joined else _passphrase(args), invite=joined)
    return int(trio.run(run_chat, node, Output(args.json)))


def _add_passphrase_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "passphrase",
        nargs="?",
        metavar="PASSPHRASE",
        help="the shared passphrase; '-' reads it from stdin; omit to use "
        "P2PD_PASSPHRASE, --passphrase-file or a prompt",
    )
    parser.add_argument(
        "--passphrase-file", metavar="FILE", help="read the passphrase from FILE's first line"
    )


def cmd_daemon(args: argparse.Namespace) -> int:
    from p2pd.daemon import run_daemon  # noqa: PLC0415

    return run_daemon(args)


def _add_module_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """The commands kept in their own modules (which import this one, hence late)."""
    from p2pd.cli_space import add_space_commands  # noqa: PLC0415
    from p2pd.cli_wan import add_wan_commands  # noqa: PLC0415

    add_wan_commands(sub, common)  # after send, listen and chat: --invite extends them
    add_space_commands(sub, common)


def build_parser() -> argparse.ArgumentParser:
    """The parser; global options are accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="identity and state (default: P2PD_STATE_DIR, else the XDG state dir)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object per line"
    )
    parser = argparse.ArgumentParser(
        prog="p2pd",
        description="Serverless peer-to-peer channels from a shared passphrase.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"p2pd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    derive = sub.add_parser(
        "derive", parents=[common], help="print the public parameters of a passphrase"
    )
    _add_passphrase_args(derive)
    derive.set_defaults(handler=cmd_derive)

    identity = sub.add_parser(
        "identity", parents=[common], help="print this node's fingerprint (creating it)"
    )
    identity.set_defaults(handler=cmd_identity)

    send = sub.add_parser(
        "send", parents=[common], help="deliver one message to a peer with the same passphrase"
    )
    send.add_argument("words", nargs="*", metavar="PASSPHRASE MSG")
    send.add_argument("--passphrase-file", metavar="FILE")
    send.add_argument("--message-file", metavar="FILE", help="send this UTF-8 file as the message")
    send.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"give up after this long (default {DEFAULT_TIMEOUT:.0f} s, "
        f"{TOR_DEFAULT_TIMEOUT:.0f} s with Tor)",
    )
    _node_options(send)
    send.set_defaults(handler=cmd_send)

    listen = sub.add_parser("listen", parents=[common], help="print every message as it arrives")
    _add_passphrase_args(listen)
    listen.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    listen.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")
    _node_options(listen)
    listen.set_defaults(handler=cmd_listen)

    chat = sub.add_parser("chat", parents=[common], help="interactive, line by line")
    _add_passphrase_args(chat)
    _node_options(chat)
    chat.set_defaults(handler=cmd_chat)

    status = sub.add_parser("status", parents=[common], help="sessions, peers and counters")
    status.set_defaults(handler=cmd_status)
    stop = sub.add_parser("stop", parents=[common], help="stop the running daemon")
    stop.set_defaults(handler=cmd_stop)

    daemon = sub.add_parser(
        "daemon", parents=[common], help="run headless: many sessions behind a local HTTP API"
    )
    daemon.add_argument("--api", metavar="HOST:PORT|unix:PATH", help="default 127.0.0.1:3000")
    daemon.add_argument(
        "--api-allow-remote", action="store_true", help="allow a non-loopback --api address"
    )
    daemon.add_argument("--config", metavar="FILE", help="TOML settings (see docs/daemon.md)")
    daemon.add_argument(
        "--foreground", action="store_true", help="log every event to stderr as JSON lines"
    )
    _node_options(daemon)
    daemon.add_argument(
        "--download-dir",
        metavar="DIR",
        help="where files published in joined spaces are saved (default: XDG download dir)",
    )
    daemon.add_argument(
        "--no-fetch", action="store_true", help="do not fetch files published in joined spaces"
    )
    from p2pd.cli_space import add_retention_options  # noqa: PLC0415

    add_retention_options(daemon)
    daemon.set_defaults(handler=cmd_daemon)

    _add_module_commands(sub, common)

    phrase = sub.add_parser("phrase", parents=[common], help="generate a strong passphrase")
    phrase.add_argument("--words", type=int, default=DEFAULT_PHRASE_WORDS, metavar="N")
    phrase.set_defaults(handler=cmd_phrase)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2pd`` command; returns the exit code."""
    if argv is None:
        hide_arguments(sys.argv)
        argv = sys.argv[1:]
    args = build_parser().parse_args(list(argv))
    args.state_dir = getattr(args, "state_dir", None)
    args.json = getattr(args, "json", False)
    handler: Handler = args.handler
    try:
        return handler(args)
    except LocalError as exc:
        print(f"p2pd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except P2pdError as exc:
        print(f"p2pd: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_FAILURE))
    except OSError as exc:
        print(f"p2pd: error: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
