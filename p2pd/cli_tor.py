"""The Tor options every node command shares (``--tor``, ``--tor-control``, ``--tor-config``,
``--tor-only``), turned into :class:`p2pd.node_types.TorSettings`.

Why apart from :mod:`p2pd.cli`: the daemon's configuration reads the same options, and
``--tor-only`` has rules of its own (it refuses every option that would send a packet
outside Tor) that belong in one place.  Invites (``p2pd invite``, ``--invite``) are Tor-only
by construction and go through the same rules.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Final

from p2pd.errors import LocalError
from p2pd.node_types import TOR_AFTER, TorInvite, TorSettings
from p2pd.paths import resolve_state_dir
from transports.torrc import read_torrc

#: Environment variable holding the password of an existing tor's control port.
TOR_PASSWORD_ENV: Final = "P2PD_TOR_PASSWORD"  # noqa: S105  (a variable name, not a password)


def add_tor_options(parser: argparse.ArgumentParser) -> None:
    tor = parser.add_argument_group("Tor")
    tor.add_argument(
        "--tor",
        action="store_true",
        help="also meet at the passphrase's onion through a tor of our own (last resort)",
    )
    _which_tor(tor)
    tor.add_argument(
        "--tor-only",
        action="store_true",
        help="send nothing outside Tor: no LAN beacon, mDNS, STUN, UPnP, TCP or direct path",
    )


def _which_tor(tor: argparse._ArgumentGroup) -> None:
    """``--tor-control`` and ``--tor-config``: which tor to use, for every Tor command."""
    tor.add_argument(
        "--tor-control",
        metavar="HOST:PORT",
        help=f"use the tor at this control port (cookie auth, or password in ${TOR_PASSWORD_ENV})",
    )
    tor.add_argument(
        "--tor-config",
        metavar="FILE",
        help="extra torrc lines for the tor p2pd launches (bridges, a private network)",
    )


def add_invite_tor_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``p2pd invite``: which tor to use (it is always Tor only)."""
    tor = parser.add_argument_group("Tor")
    _which_tor(tor)


def tor_settings(args: argparse.Namespace, invite: TorInvite | None = None) -> TorSettings | None:
    """TorSettings from --tor/--tor-control/--tor-config/--tor-only; None without Tor.
    With an ``invite`` (host or join) the node is Tor only, whatever the options say."""
    from p2pd.cli import _parse_target  # noqa: PLC0415  (cli imports this module)

    only = bool(getattr(args, "tor_only", False)) or invite is not None
    control_text = getattr(args, "tor_control", None)
    config_file = getattr(args, "tor_config", None)
    if not (getattr(args, "tor", False) or only or control_text or config_file):
        return None
    if only:
        used = [
            option
            for option, value in (
                ("--target", getattr(args, "target", None)),
                ("--stun", getattr(args, "stun", None)),
                ("--assist", getattr(args, "assist", None)),
                ("--offer", getattr(args, "offer", None)),
            )
            if value
        ]
        if used:
            what = "an invite" if invite is not None else "--tor-only"
            raise LocalError(f"{what} sends nothing outside Tor: drop {', '.join(used)}")
    if control_text and config_file:
        raise LocalError("--tor-config is for the tor p2pd launches, not one at --tor-control")
    return TorSettings(
        control=_parse_target(control_text, "--tor-control") if control_text else None,
        password=os.environ.get(TOR_PASSWORD_ENV) or None,
        torrc=read_torrc(Path(config_file)) if config_file else {},
        only=only,
        state_dir=resolve_state_dir(getattr(args, "state_dir", None)),
        after=0.0 if only else TOR_AFTER,
        invite=invite,
    )
