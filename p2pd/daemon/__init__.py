"""``p2pd daemon``: one headless process hosting several passphrase sessions behind a local API.

Theory of operation
-------------------
Start-up, in this order, so a failure leaves nothing behind: merge the options
(:mod:`.config`), take the state directory's flock (:mod:`.lock`; a second daemon exits
2 here), read and derive the passphrases the config file names (a weak or unreadable one
stops the start with exit 2), write a fresh token, then inside trio start the sessions
and the HTTP server (:mod:`.server`) and only then announce ``daemon.json``.

Everything lives in one trio nursery tree: the signal watcher, the sessions
(:mod:`.service`) and the server.  SIGTERM (exit 0), SIGINT (exit 130) and
``POST /v1/shutdown`` (exit 0) all set one stop event; then the sessions close their
channels (event streams and waiting sends end), Hypercorn finishes what is in flight
within a second, ``daemon.json`` is removed and the lock released — about a second in
all.

Without ``--foreground`` the daemon still runs in the foreground process-wise (a service
manager such as systemd supervises it; no double fork); it only logs less (warnings and
errors instead of every lifecycle event).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import stat
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ethersync.store import Retention
from p2pd import __version__
from p2pd.derive import Params, derive
from p2pd.errors import LocalError
from p2pd.identity import Identity, load_or_create
from p2pd.passphrase import read_passphrase
from p2pd.paths import ensure_state_dir, resolve_state_dir
from p2pd.space.commands import default_download_dir

from . import logs
from .api import Api, DaemonInfo, build_app
from .config import DaemonConfig, load
from .ethersync_api import Spaces, ethersync_routes
from .lock import DaemonLock
from .server import run_server
from .service import Service, ServiceError

#: Exit codes: a clean stop, and a stop by Ctrl-C (as everywhere in p2pd).
EXIT_OK = 0
EXIT_INTERRUPTED = 130
#: Longest wait for the HTTP server to finish after the sessions closed.
SERVER_STOP_GRACE = 1.5
#: File-creation mask for the whole daemon: everything it creates is private.
DAEMON_UMASK = 0o077


@dataclass(slots=True)
class _Outcome:
    exit_code: int = EXIT_OK
    failure: LocalError | None = None
    stop: trio.Event = field(default_factory=trio.Event)


def _configured_params(config: DaemonConfig) -> list[Params]:
    """Read and derive every session of the config file (before trio: errors exit 2)."""
    params = []
    for path in config.passphrase_files:
        if path.exists() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logs.event(logging.WARNING, "passphrase_file_not_private", path=str(path))
        passphrase = read_passphrase(None, passphrase_file=str(path), prompt=False).passphrase
        params.append(derive(passphrase))
    return params


async def _watch_signals(outcome: _Outcome) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            outcome.exit_code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_OK
            logs.event(logging.INFO, "signal", signal=signal.Signals(signum).name)
            outcome.stop.set()


@dataclass(frozen=True, slots=True)
class SpaceSettings:
    """Where the daemon's EtherSync spaces put fetched files (None: fetch nothing) and how
    long their stores keep envelopes."""

    download_dir: Path | None
    retention: Retention


def _space_settings(args: argparse.Namespace) -> SpaceSettings:
    from p2pd.cli_space import space_retention  # noqa: PLC0415

    if getattr(args, "no_fetch", False):
        download_dir = None
    else:
        chosen = getattr(args, "download_dir", None)
        download_dir = Path(chosen).expanduser() if chosen else default_download_dir()
    return SpaceSettings(download_dir, space_retention(args))


async def _serve(
    config: DaemonConfig,
    lock: DaemonLock,
    identity: Identity,
    token: str,
    configured: list[Params],
    *,
    space_settings: SpaceSettings,
) -> _Outcome:
    outcome = _Outcome()
    info = DaemonInfo()
    server_done = trio.Event()

    async def server(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await run_server(app, config.api, outcome.stop.wait, task_status=task_status)
        finally:
            server_done.set()

    async with trio.open_nursery() as root:
        root.start_soon(_watch_signals, outcome)
        async with trio.open_nursery() as sessions:
            service = Service(identity, config.node, sessions)
            spaces = Spaces(
                service,
                sessions,
                lock.state_dir,
                download_dir=space_settings.download_dir,
                retention=space_settings.retention,
            )
            try:
                for params in configured:
                    await service.join_params(params)
            except ServiceError as exc:
                outcome.failure = exc
                outcome.stop.set()
            api = Api(service, info, outcome.stop.set)
            extra = frozenset({config.api.host.lower()}) if config.allow_remote else frozenset()
            app = build_app(api, token, extra, ethersync_routes(spaces, api.subscribers))
            if outcome.failure is None:
                try:
                    info.api = await root.start(server)
                except LocalError as exc:  # cannot listen: say so in one line, exit 2
                    outcome.failure = exc
                    outcome.stop.set()
            if outcome.failure is None:
                lock.announce({"pid": os.getpid(), "api": info.api, "version": __version__})
                logs.event(
                    logging.INFO,
                    "daemon_started",
                    pid=os.getpid(),
                    api=info.api,
                    version=__version__,
                    fingerprint=identity.fingerprint,
                    sessions=len(service.sessions),
                )
            await outcome.stop.wait()
            logs.event(logging.INFO, "daemon_stopping")
            await service.close()
            await spaces.close()
            sessions.cancel_scope.cancel()
        with trio.move_on_after(SERVER_STOP_GRACE):
            await server_done.wait()
        root.cancel_scope.cancel()
    return outcome


def run_daemon(args: argparse.Namespace) -> int:
    """``p2pd daemon``: run until stopped; the exit code.  Raises
    :class:`~p2pd.errors.LocalError` (exit 2) for bad options, a taken state directory,
    an unusable passphrase file or API address."""
    config = load(args)
    os.umask(DAEMON_UMASK)
    state_dir: Path = ensure_state_dir(resolve_state_dir(getattr(args, "state_dir", None)))
    lock = DaemonLock(state_dir)
    lock.acquire()
    try:
        logs.setup(config.log_level)
        identity = load_or_create(state_dir)
        configured = _configured_params(config)
        token = lock.write_token()
        settings = _space_settings(args)
        serve = functools.partial(_serve, space_settings=settings)
        outcome = trio.run(serve, config, lock, identity, token, configured)
        if outcome.failure is not None:
            raise outcome.failure
        logs.event(logging.INFO, "daemon_stopped", exit_code=outcome.exit_code)
        return outcome.exit_code
    finally:
        lock.release()


__all__ = ["run_daemon"]
