"""The WAN and invite commands of the CLI: ``relay``, ``offer``, ``invite`` and ``--invite``.

They sit apart from :mod:`p2pd.cli` because each brings its own options and lifetime rules
(an offer's or invite's TTL, a relay's byte budget) that the everyday send / listen / chat
need not carry; :mod:`p2pd.cli` registers them after ``send``, ``listen`` and ``chat``,
which ``--invite`` extends.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Any

from p2pd.cli import _add_passphrase_args, _make_node, _node_options, _parse_target, _passphrase
from p2pd.errors import LocalError


def cmd_relay(args: argparse.Namespace) -> int:
    import trio  # noqa: PLC0415

    from p2pd.commands import Output, run_relay  # noqa: PLC0415

    bind = _parse_target(args.bind, "--bind", any_port=True)
    return int(trio.run(run_relay, bind, args.max_bytes_per_peer, Output(args.json)))


def cmd_offer(args: argparse.Namespace) -> int:
    import trio  # noqa: PLC0415

    from p2pd.commands import Output, run_offer  # noqa: PLC0415

    node = _make_node(args, _passphrase(args))
    output = Output(args.json)
    return int(trio.run(run_offer, node, args.ttl, args.listen, args.count, output))


def cmd_invite(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    import trio  # noqa: PLC0415

    from p2pd.commands import Output, run_invite  # noqa: PLC0415
    from p2pd.invite import new_invite  # noqa: PLC0415
    from p2pd.node_types import TorInvite  # noqa: PLC0415

    if args.chat and args.count is not None:
        raise LocalError("invite --chat ends at end of input, not after --count messages")
    invite, seed = new_invite(time.time(), args.ttl)
    tor = TorInvite(address=invite.address, expires_at=invite.expires_at, seed=seed)
    node = _make_node(args, None, invite=(invite.params(), tor))
    output = Output(args.json)
    expires = float(invite.expires_at)
    run = partial(run_invite, qr=args.qr, chat=sys.stdin if args.chat else None)
    return int(trio.run(run, node, invite.text(), expires, args.count, output))


def _add_invite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--invite",
        metavar="INVITE",
        help="connect once through Tor with an invite from p2pd invite (no passphrase; "
        "'-' reads it from stdin)",
    )


def _add_invite_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """``invite``, and ``--invite`` for the commands that can join one."""
    from p2pd.cli_tor import add_invite_tor_options  # noqa: PLC0415
    from p2pd.invite import DEFAULT_TTL  # noqa: PLC0415

    for joiner in ("send", "listen", "chat"):
        _add_invite_option(sub.choices[joiner])
    invite = sub.add_parser(
        "invite",
        parents=[common],
        help="print a one-time invite (text and QR) for a peer without the passphrase, "
        "then listen to that peer through Tor",
    )
    invite.add_argument(
        "--ttl",
        type=float,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help=f"invite lifetime (default {DEFAULT_TTL:.0f})",
    )
    invite.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    invite.add_argument("--no-qr", dest="qr", action="store_false", help="print no QR code")
    invite.add_argument(
        "--chat",
        action="store_true",
        help="chat with the peer (stdin lines to it) instead of only listening",
    )
    add_invite_tor_options(invite)
    # What _make_node reads: an invite's node is Tor only, with no other path.
    invite.set_defaults(
        handler=cmd_invite,
        port=None,
        interfaces=None,
        no_beacon=True,
        no_mdns=True,
        target=[],
        stun=[],
        assist=[],
        no_upnp=True,
        no_tcp=True,
    )


def add_wan_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """``relay``, ``offer`` and ``invite`` (after send, listen and chat: it extends them)."""
    relay = sub.add_parser(
        "relay", parents=[common], help="serve as an assist: rendezvous and relay for others"
    )
    relay.add_argument("--bind", required=True, metavar="HOST:PORT", help="UDP and TCP address")
    relay.add_argument(
        "--max-bytes-per-peer",
        type=int,
        metavar="BYTES",
        help="bytes relayed per registrant per hour (default 256 MiB)",
    )
    relay.set_defaults(handler=cmd_relay)

    offer = sub.add_parser(
        "offer", parents=[common], help="print an expiring offer (text and QR), then listen"
    )
    _add_passphrase_args(offer)
    offer.add_argument(
        "--ttl", type=float, default=600.0, metavar="SECONDS", help="offer lifetime (default 600)"
    )
    offer.add_argument(
        "--no-listen",
        dest="listen",
        action="store_false",
        help="print the offer and exit instead of waiting for the peer",
    )
    offer.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    _node_options(offer)
    offer.set_defaults(handler=cmd_offer)
    _add_invite_command(sub, common)
