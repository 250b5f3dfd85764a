"""``p2pd space ...``: EtherSync spaces from the command line (argparse and handlers).

``add_space_commands(sub, common)`` registers ``space`` and its subcommands on the
``p2pd`` parser; the work happens in :mod:`p2pd.space.commands`.  Every command that
takes a passphrase accepts it the usual ways (argument, ``-`` for stdin,
``--passphrase-file``, ``P2PD_PASSPHRASE``, a prompt) and never prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from p2pd.cli import (
    DEFAULT_TIMEOUT,
    EXIT_OK,
    _add_passphrase_args,
    _daemon,
    _make_node,
    _node_options,
    _parse_target,
    _passphrase,
)
from p2pd.errors import LocalError

#: Default seconds ``publish`` waits for a peer to hold the whole file.
PUBLISH_TIMEOUT = 600.0


def _state_dir(args: argparse.Namespace) -> Path:
    from p2pd.paths import resolve_state_dir  # noqa: PLC0415

    return resolve_state_dir(getattr(args, "state_dir", None))


def _download_dir(args: argparse.Namespace) -> Path:
    from p2pd.space.commands import default_download_dir  # noqa: PLC0415

    if args.download_dir:
        return Path(args.download_dir).expanduser()
    return default_download_dir()


def _store_path(args: argparse.Namespace, space_id: bytes) -> Path:
    from ethersync.store import default_store_path  # noqa: PLC0415

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
    return default_store_path(space_id, data_dir)


def _run(args: argparse.Namespace, make_body: Any, *, auto_fetch: bool) -> int:
    """Start a node with the saved bootstrap peers as targets, and a space over it."""
    import trio  # noqa: PLC0415

    from ethersync.keys import load_or_create_device  # noqa: PLC0415
    from p2pd.commands import Output  # noqa: PLC0415
    from p2pd.space import bootstrap  # noqa: PLC0415
    from p2pd.space.commands import SpaceSetup, run_space  # noqa: PLC0415

    passphrase = _passphrase(args)
    state_dir = _state_dir(args)
    if not args.tor_only:  # saved bootstrap peers are direct addresses: not through Tor
        args.target = [*args.target, *bootstrap.load(state_dir)]
    node = _make_node(args, passphrase)
    del passphrase
    setup = SpaceSetup(
        store_path=_store_path(args, node.params.space_id),
        device=load_or_create_device(state_dir),
        download_dir=_download_dir(args),
        auto_fetch=auto_fetch,
        retention=_retention(args),
    )
    output = Output(args.json)
    return int(trio.run(run_space, node, setup, make_body(output)))


def _output(args: argparse.Namespace) -> Any:
    from p2pd.commands import Output  # noqa: PLC0415

    return Output(args.json)


def cmd_join(args: argparse.Namespace) -> int:
    from p2pd.space import viadaemon  # noqa: PLC0415
    from p2pd.space.commands import join_body  # noqa: PLC0415

    client = _daemon(args)
    if client is not None:
        phrase = _passphrase(args)
        return viadaemon.run_join(client, phrase, _output(args), args.timeout, args.count)
    return _run(
        args, lambda out: join_body(out, args.timeout, args.count), auto_fetch=not args.no_fetch
    )


def cmd_send(args: argparse.Namespace) -> int:
    from p2pd.space import viadaemon  # noqa: PLC0415
    from p2pd.space.commands import send_body  # noqa: PLC0415

    client = _daemon(args)
    if client is not None:
        return viadaemon.run_send(client, _passphrase(args), args.text, _output(args))
    return _run(args, lambda out: send_body(out, args.text, args.timeout), auto_fetch=False)


def cmd_publish(args: argparse.Namespace) -> int:
    from p2pd.space import viadaemon  # noqa: PLC0415
    from p2pd.space.commands import publish_body  # noqa: PLC0415

    path = Path(args.file).expanduser()
    if not path.is_file():
        raise LocalError(f"{path} is not a readable file")
    client = _daemon(args)
    if client is not None:
        phrase = _passphrase(args)
        return viadaemon.run_publish(client, phrase, path, args.timeout, _output(args))
    return _run(args, lambda out: publish_body(out, path, args.timeout), auto_fetch=False)


def cmd_get(args: argparse.Namespace) -> int:
    from p2pd.space import viadaemon  # noqa: PLC0415
    from p2pd.space.commands import get_body  # noqa: PLC0415

    client = _daemon(args)
    if client is not None:
        phrase = _passphrase(args)
        return viadaemon.run_get(client, phrase, args.file_id, args.timeout, _output(args))
    return _run(args, lambda out: get_body(out, args.file_id, args.timeout), auto_fetch=False)


def cmd_ls(args: argparse.Namespace) -> int:
    from ethersync.keys import SpaceKeys  # noqa: PLC0415
    from ethersync.store import Store  # noqa: PLC0415
    from p2pd.derive import derive  # noqa: PLC0415
    from p2pd.space.commands import list_envelopes  # noqa: PLC0415

    keys = SpaceKeys.from_params(derive(_passphrase(args)))
    path = _store_path(args, keys.space_id)
    if not path.exists():
        print("p2pd: nothing stored for this space yet (join it first)", file=sys.stderr)
        return EXIT_OK
    with Store(path) as store:
        rows = list_envelopes(store, keys)
    for row in rows:
        if args.json:
            print(json.dumps(row, sort_keys=True, ensure_ascii=False), flush=True)
            continue
        when = datetime.fromtimestamp(row["ts"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        if row["kind"] == "msg":
            what = row["text"]
        elif row["kind"] == "file":
            held = "" if row["complete"] else " (incomplete)"
            what = f"{row['name']} {row['size']} bytes id {row['id'][:16]}{held}"
        else:
            what = ""
        print(f"{when}  {row['author']}  {row['seq']:>4}  {row['kind']:<4}  {what}", flush=True)
    return EXIT_OK


def cmd_peers(args: argparse.Namespace) -> int:
    from p2pd.space import bootstrap  # noqa: PLC0415

    state_dir = _state_dir(args)
    if args.action == "ls":
        for address in bootstrap.load(state_dir):
            print(json.dumps({"addr": address}) if args.json else address, flush=True)
        return EXIT_OK
    if not args.address:
        raise LocalError(f"space peers {args.action} needs HOST:PORT")
    host, port = _parse_target(args.address, "HOST:PORT")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if args.action == "add":
        changed = bootstrap.add(state_dir, address)
        verb = "added" if changed else "already listed"
    else:
        changed = bootstrap.remove(state_dir, address)
        verb = "removed" if changed else "was not listed"
    print(f"p2pd: {address} {verb}", file=sys.stderr)
    return EXIT_OK


#: Default retention: a month of history, at most a GiB of envelopes and chunks.
DEFAULT_KEEP_DAYS = 30.0
DEFAULT_KEEP_BYTES = "1G"
#: Milliseconds per day, for ``--keep-days``.
DAY_MS = 86_400_000
#: Size suffixes ``--keep-bytes`` accepts (powers of 1024).
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``123``, ``64M``, ``1G`` (binary units) as bytes; ValueError otherwise."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in SIZE_UNITS else ""
    number = float(text[: len(text) - len(unit)])
    if number < 0:
        raise ValueError(text)
    return int(number * SIZE_UNITS[unit])


def space_retention(args: argparse.Namespace) -> Any:
    """The store retention ``--keep-days`` and ``--keep-bytes`` ask for (defaults if absent)."""
    return _retention(args)


def _retention(args: argparse.Namespace) -> Any:
    from ethersync.store import Retention  # noqa: PLC0415

    days = getattr(args, "keep_days", DEFAULT_KEEP_DAYS)
    size = getattr(args, "keep_bytes", DEFAULT_KEEP_BYTES)
    try:
        max_bytes = parse_size(size)
    except ValueError:
        raise LocalError(f"--keep-bytes: not a size: {size!r}") from None
    if days < 0:
        raise LocalError("--keep-days must not be negative")
    return Retention(max_age_ms=int(days * DAY_MS), max_bytes=max_bytes)


def add_retention_options(parser: argparse.ArgumentParser) -> None:
    """``--keep-days`` and ``--keep-bytes`` (space commands and the daemon)."""
    parser.add_argument(
        "--keep-days",
        type=float,
        default=DEFAULT_KEEP_DAYS,
        metavar="N",
        help=f"drop envelopes older than N days (default {DEFAULT_KEEP_DAYS:g})",
    )
    parser.add_argument(
        "--keep-bytes",
        default=DEFAULT_KEEP_BYTES,
        metavar="SIZE",
        help=f"keep at most SIZE of envelopes and chunks, e.g. 500M (default {DEFAULT_KEEP_BYTES})",
    )


def _space_options(parser: argparse.ArgumentParser) -> None:
    add_retention_options(parser)
    parser.add_argument(
        "--data-dir", metavar="DIR", help="where the space store lives (default: XDG data dir)"
    )
    parser.add_argument(
        "--download-dir",
        metavar="DIR",
        help="where fetched files go (default: the Downloads dir/p2pd)",
    )


def add_space_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``space`` and its subcommands on the ``p2pd`` subparsers ``sub``."""
    space = sub.add_parser(
        "space", parents=[common], help="EtherSync: messages and files shared in a space"
    )
    actions = space.add_subparsers(dest="space_command", metavar="ACTION", required=True)

    def node_command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, parents=[common], help=help_text)
        _add_passphrase_args(parser)
        _space_options(parser)
        _node_options(parser)
        return parser

    join = node_command("join", "sync the space in the foreground and print what arrives")
    join.add_argument("--no-fetch", action="store_true", help="do not fetch announced files")
    join.add_argument("--timeout", type=float, metavar="SECONDS", help="leave after this long")
    join.add_argument("--count", type=int, metavar="N", help="leave after N messages/files")
    join.set_defaults(handler=cmd_join)
    events = node_command("events", "stream the space's events (JSON lines with --json)")
    events.add_argument("--no-fetch", action="store_true", help="do not fetch announced files")
    events.add_argument("--timeout", type=float, metavar="SECONDS", help="leave after this long")
    events.add_argument("--count", type=int, metavar="N", help="leave after N messages/files")
    events.set_defaults(handler=cmd_join)
    send = node_command("send", "publish a text message")
    send.add_argument("text", metavar="TEXT")
    send.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    send.set_defaults(handler=cmd_send)
    publish = node_command("publish", "publish a file and stay until a peer holds it")
    publish.add_argument("file", metavar="FILE")
    publish.add_argument("--timeout", type=float, default=PUBLISH_TIMEOUT, metavar="SECONDS")
    publish.set_defaults(handler=cmd_publish)
    get = node_command("get", "fetch one file now")
    get.add_argument("file_id", metavar="FILE_ID_PREFIX")
    get.add_argument("--timeout", type=float, default=PUBLISH_TIMEOUT, metavar="SECONDS")
    get.set_defaults(handler=cmd_get)
    ls = actions.add_parser("ls", parents=[common], help="list the envelopes stored here")
    _add_passphrase_args(ls)
    _space_options(ls)
    ls.set_defaults(handler=cmd_ls)
    peers = actions.add_parser(
        "peers", parents=[common], help="bootstrap peers tried at every start"
    )
    peers.add_argument("action", choices=("add", "ls", "rm"))
    peers.add_argument("address", nargs="?", metavar="HOST:PORT")
    peers.set_defaults(handler=cmd_peers)
