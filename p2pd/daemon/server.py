"""The API's HTTP server: Hypercorn's trio worker inside the daemon's nursery.

Hypercorn speaks HTTP/1.1 (h11) and serves our ASGI app on the daemon's own trio loop,
so API handlers and nodes share one scheduler and no thread.  ``shutdown_trigger`` is the
daemon's stop event: when it fires Hypercorn stops accepting, lets requests in flight
finish for at most :data:`GRACEFUL_TIMEOUT`, then returns.

A unix socket is made 0600 right after binding (the state directory around it is 0700
anyway); a stale socket left by a dead daemon is removed first, a live one is not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from .config import ApiAddress, ConfigError

#: Seconds in-flight requests get to finish once the daemon stops (the whole stop must
#: fit in about 2 s; event streams and waiting sends end at once, so this is a backstop).
GRACEFUL_TIMEOUT = 1.0
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_TIMEOUT = 30.0
#: Mode of the unix socket: only the owner may connect.
SOCKET_MODE = 0o600


def _remove_stale_socket(path: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"--api unix:{path}: a file that is not a socket is in the way")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: left by a daemon that died
        return
    except OSError:
        return
    finally:
        probe.close()
    raise ConfigError(f"--api unix:{path}: another process is listening there")


def hypercorn_config(address: ApiAddress) -> Config:
    config = Config()
    config.bind = [address.bind]
    config.accesslog = None  # paths and peers are not secrets, but requests are not events
    config.errorlog = logging.getLogger("p2pd.daemon.http")
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.include_server_header = False
    return config


async def run_server(
    app: Callable[..., Awaitable[None]],
    address: ApiAddress,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns; ``task_status`` gets the API URL
    (``http://127.0.0.1:PORT`` with the real port, or ``unix:/path``)."""
    if address.unix_path is not None:
        _remove_stale_socket(str(address.unix_path))
    config = hypercorn_config(address)
    failure: OSError | None = None
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(
                partial(serve, cast(Any, app), config, shutdown_trigger=shutdown_trigger)
            )
        except OSError as exc:  # raised bare below, not inside the nursery's ExceptionGroup
            failure = exc
        else:
            if address.unix_path is not None:
                with contextlib.suppress(OSError):
                    os.chmod(address.unix_path, SOCKET_MODE)
                task_status.started(f"unix:{address.unix_path}")
            else:
                task_status.started(binds[0])
    if failure is None and address.unix_path is not None:
        with contextlib.suppress(OSError):
            os.unlink(address.unix_path)
    if failure is not None:
        raise ConfigError(f"cannot listen on {address.bind}: {failure.strerror}")
