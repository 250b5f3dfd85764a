"""The Tor driver: a tor process of our own (or an existing one), onion services, SOCKS5 streams.

Theory of operation
-------------------
:class:`TorLauncher` is an async context manager.  Given no control address it launches
``tor`` with :func:`stem.process.launch_tor_with_config` (in a worker thread): data directory
``STATE_DIR/tor`` (0700), ``SocksPort auto``, ``ControlPort auto`` written to a file in that
directory, ``CookieAuthentication 1``, and the process owned by us (tor exits when we do or
when our control connection closes).  It returns as soon as tor started, then waits for
tor's own bootstrap report under a trio deadline, so a slow start is cancellable.  Given
``control=(host, port)`` it attaches to a running tor instead (cookie or password auth).
Extra torrc options (the lab's private network needs ``DirAuthority`` lines) are merged in.

Every stem call blocks, so each one runs in :func:`trio.to_thread.run_sync`.  Onion services
are ephemeral (``ADD_ONION`` on our control connection, never ``Detach``): they die with the
connection.  On exit the launcher removes what it published (``DEL_ONION``), closes the
controller and terminates a tor it launched, shielded from cancellation.

The onion key is never written to disk: ADD_ONION takes it on the control connection
(``Flags=DiscardPK`` anyway; tor does not return a key it was given), and a log filter on
stem's logger blanks the key from stem's request tracing, the one place it could leak.

:meth:`TorLauncher.connect` opens a stream through tor's SocksPort with the SOCKS5 client
of :mod:`transports.socks5`; a refusal says why as :attr:`TorConnectError.reason`.

:func:`meet` applies the rendezvous rules of :mod:`transports.onion` (publish and connect at
once, a hello that recognises our own nonce, wait / withdraw / back off) and returns one
stream to the other peer, past the hello, on which the caller runs framed datagrams
(:mod:`transports.framing`) and the Noise handshake as path ``tor``.  Its invariant: an
attempt or hello in flight is never cut short (each is bounded by its own timeout), and the
listener stays open :data:`MEET_GRACE` after the first stream, so a stream one end counted is
counted by the other too, and both keep the same one (the lowest connector nonce).  If an
answer is lost anyway, the end that kept a stream the other never saw gets end-of-stream
and meets again.  Measured on the lab's private network: of 14 starts of both peers at the
same instant, 12 met in about 5 s (one reached itself and waited, the other reached it) and
2 in 63 and 91 s (after a withdrawal round); with one peer 30 s late, 35-48 s.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import stem
import stem.connection
import stem.process
import trio
from stem import Signal
from stem.control import Controller, EventType, Listener

from p2pd.errors import LocalError
from p2pd.paths import STATE_DIR_MODE, ensure_state_dir
from transports.base import Addr
from transports.onion import KEY_TYPE
from transports.socks5 import TorConnectError, socks5_connect
from transports.torrc import TorrcValue

#: Where the user finds tor when it is missing.
INSTALL_HINT = "install tor: Debian/Ubuntu `apt install tor`, macOS `brew install tor`"
#: Seconds tor gets to bootstrap (reach the network) before we give up.
BOOTSTRAP_TIMEOUT = 120.0
#: Interval at which tor's bootstrap progress is polled while waiting.
BOOTSTRAP_POLL = 0.25
#: Seconds for an onion descriptor to reach at least one HSDir.
PUBLISH_TIMEOUT = 120.0
#: Seconds a launched tor gets to exit after SIGTERM before SIGKILL.
STOP_GRACE = 5.0
#: Name of the tor data directory inside the state directory.
TOR_DIR = "tor"
#: File tor writes its control address to (ControlPortWriteToFile).
CONTROL_PORT_FILE = "control_port"
#: Address of the listener the onion service points at.
LOOPBACK = "127.0.0.1"


def bootstrap_percent(phase: str) -> int | None:
    """The ``PROGRESS=N`` of tor's ``status/bootstrap-phase`` (0-100), None if absent or bad."""
    match = re.search(r"\bPROGRESS=(\d{1,3})\b", phase)
    if match is None or int(match.group(1)) > 100:
        return None
    return int(match.group(1))


class TorMissingError(LocalError):
    """No tor binary: the message says which package to install."""


class TorControlError(LocalError):
    """tor could not be launched, reached, authenticated or asked to do something."""


class TorBootstrapTimeout(TorControlError):
    """tor runs (or was reached) but did not finish bootstrapping in time: a slow or blocked
    network, not a mistake of the user's; the caller may go on without Tor and try again."""


class TorPublishTimeout(TorControlError):
    """tor took the service but reported no descriptor upload in time (it may still come)."""

    def __init__(self, message: str, service_id: str) -> None:
        super().__init__(message)
        self.service_id = service_id


class _RedactKeys(logging.Filter):
    """Blanks ADD_ONION key material from stem's request tracing."""

    _KEY = re.compile(r"(ED25519-V3|RSA1024):\S+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if ":" in message:
            record.msg, record.args = self._KEY.sub(r"\1:<redacted>", message), ()
        return True


_STEM_LOGGER = logging.getLogger("stem")
if not any(isinstance(f, _RedactKeys) for f in _STEM_LOGGER.filters):
    _STEM_LOGGER.addFilter(_RedactKeys())


# --- the launcher ----------------------------------------------------------------------


async def _uploaded(events: trio.MemoryReceiveChannel[Any], service: str) -> None:
    """Return once a descriptor of ``service`` reached an HSDir (an UPLOADED event).

    As stem does: an UPLOADED event may lack the address, so it also counts when its
    HSDir is one an UPLOAD of ours went to.
    """
    directories: set[str] = set()
    async for event in events:
        if event.action == stem.HSDescAction.UPLOAD and event.address == service:
            directories.add(event.directory_fingerprint)
        elif event.action == stem.HSDescAction.UPLOADED and (
            event.address == service or event.directory_fingerprint in directories
        ):
            return


def _require_tor(tor_cmd: str) -> str:
    path = shutil.which(tor_cmd)
    if path is None:
        raise TorMissingError(f"`{tor_cmd}` was not found on PATH; {INSTALL_HINT}")
    return path


def _parse_control_file(text: str) -> Addr:
    """``PORT=127.0.0.1:9051`` (what ControlPortWriteToFile writes) as an address."""
    for line in text.splitlines():
        if line.startswith("PORT="):
            host, _, port = line[len("PORT=") :].rpartition(":")
            return host, int(port)
    raise TorControlError("tor wrote no control port")


class TorLauncher:
    """A tor we launched or attached to; see the module docstring."""

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        control: Addr | None = None,
        password: str | None = None,
        cookie_path: Path | None = None,
        torrc: Mapping[str, TorrcValue] | None = None,
        tor_cmd: str = "tor",
        bootstrap_timeout: float = BOOTSTRAP_TIMEOUT,
        on_bootstrap: Callable[[int], None] | None = None,
    ) -> None:
        """on_bootstrap: called with tor's bootstrap percentage each time it grows."""
        if control is None and state_dir is None:
            raise LocalError("TorLauncher needs a state directory to launch tor, or control=")
        self.state_dir = state_dir
        self.control = control
        self._password = password
        self._cookie_path = cookie_path
        self.torrc = dict(torrc or {})
        self.tor_cmd = tor_cmd
        self.bootstrap_timeout = bootstrap_timeout
        self._on_bootstrap = on_bootstrap
        self.socks: Addr | None = None
        self._controller: Any = None
        self._process: subprocess.Popen[bytes] | None = None
        self._services: set[str] = set()

    def __repr__(self) -> str:
        mode = "launched" if self._process is not None else "attached"
        return f"<TorLauncher {mode} socks={self.socks} services={len(self._services)}>"

    @property
    def launched(self) -> bool:
        """Whether the tor process is ours (and will be terminated on exit)."""
        return self._process is not None

    async def __aenter__(self) -> TorLauncher:
        try:
            await self._start()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    async def _start(self) -> None:
        if self.control is None:
            self.control = await self._launch()
        self._controller = await trio.to_thread.run_sync(self._open_controller, self.control)
        await self._wait_bootstrapped()
        listeners = await self._call(self._controller.get_listeners, Listener.SOCKS)
        if not listeners:
            raise TorControlError("tor has no SocksPort; add `SocksPort auto` to its torrc")
        host, port = listeners[0]
        self.socks = (str(host), int(port))

    async def _launch(self) -> Addr:
        tor = _require_tor(self.tor_cmd)
        assert self.state_dir is not None
        data_dir = ensure_state_dir(self.state_dir) / TOR_DIR
        data_dir.mkdir(mode=STATE_DIR_MODE, exist_ok=True)
        data_dir.chmod(STATE_DIR_MODE)
        control_file = data_dir / CONTROL_PORT_FILE
        control_file.unlink(missing_ok=True)
        config: dict[str, TorrcValue] = {
            "DataDirectory": str(data_dir),
            # ExtendedErrors: tor says why an onion connect failed (SOCKS codes 0xF0-0xF7).
            "SocksPort": f"{LOOPBACK}:auto ExtendedErrors",
            "ControlPort": f"{LOOPBACK}:auto",
            "ControlPortWriteToFile": str(control_file),
            "CookieAuthentication": "1",
            **self.torrc,
        }

        def launch() -> subprocess.Popen[bytes]:
            try:
                proc: subprocess.Popen[bytes] = stem.process.launch_tor_with_config(
                    config, tor_cmd=tor, completion_percent=0, timeout=None, take_ownership=True
                )
            except OSError as exc:
                raise TorControlError(f"tor did not start: {exc}") from None
            return proc

        self._process = await trio.to_thread.run_sync(launch)
        with trio.move_on_after(self.bootstrap_timeout):
            while not control_file.exists():
                await trio.sleep(BOOTSTRAP_POLL)
        if not control_file.exists():
            raise TorBootstrapTimeout(
                f"tor opened no control port in {self.bootstrap_timeout:.0f} s"
            )
        return _parse_control_file(control_file.read_text())

    def _open_controller(self, control: Addr) -> Any:
        try:
            controller = Controller.from_port(address=control[0], port=control[1])
        except stem.SocketError as exc:
            raise TorControlError(f"cannot reach tor's control port {control}: {exc}") from None
        try:
            if self._cookie_path is not None:
                stem.connection.authenticate_cookie(controller, str(self._cookie_path))
                # What stem.connection.authenticate does after success: without it the
                # controller never subscribes to events (publication would never be seen).
                controller._post_authentication()
            else:
                controller.authenticate(password=self._password)
        except (stem.connection.AuthenticationFailure, OSError) as exc:
            controller.close()
            raise TorControlError(f"tor refused our control authentication: {exc}") from None
        return controller

    async def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """A blocking stem call in a worker thread, stem's errors mapped to ours."""

        def call() -> Any:
            try:
                return method(*args, **kwargs)
            except (stem.ControllerError, stem.Timeout) as exc:
                raise TorControlError(f"tor: {exc}") from None

        return await trio.to_thread.run_sync(call)

    async def _wait_bootstrapped(self) -> None:
        shown = -1
        with trio.move_on_after(self.bootstrap_timeout) as scope:
            while True:
                phase = await self._call(self._controller.get_info, "status/bootstrap-phase")
                percent = bootstrap_percent(str(phase))
                if percent is not None and percent > shown and self._on_bootstrap is not None:
                    shown = percent
                    self._on_bootstrap(percent)
                if percent == 100:
                    return
                await trio.sleep(BOOTSTRAP_POLL)
        if scope.cancelled_caught:
            raise TorBootstrapTimeout(
                f"tor did not bootstrap in {self.bootstrap_timeout:.0f} s "
                "(a slow or blocked network? bridges go in --tor-config)"
            )

    def _require_controller(self) -> Any:
        if self._controller is None:
            raise LocalError("use TorLauncher as `async with` before talking to tor")
        return self._controller

    async def publish(
        self,
        key_blob: str,
        virtual_port: int,
        target_port: int,
        *,
        timeout: float = PUBLISH_TIMEOUT,
    ) -> str:
        """Publish the onion service of ``key_blob`` (ED25519-V3) and return its service id.

        Connections to ``virtual_port`` of the onion reach ``127.0.0.1:target_port``.  Returns
        once a descriptor was uploaded to at least one HSDir.
        """
        controller = self._require_controller()
        # Our own wait for the upload (stem's await_publication would hold a worker thread
        # for the whole wait, deaf to cancellation).  The listener is in place before
        # ADD_ONION, so no event is missed; tor's event thread hands events to trio.
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[Any](math.inf)

        def on_event(event: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(send.send_nowait, event)

        await self._call(controller.add_event_listener, on_event, EventType.HS_DESC)
        try:
            response = await self._call(
                controller.create_ephemeral_hidden_service,
                {virtual_port: f"{LOOPBACK}:{target_port}"},
                key_type=KEY_TYPE,
                key_content=key_blob,
                discard_key=True,
            )
            service = str(response.service_id)
            self._services.add(service)
            with trio.move_on_after(timeout):
                await _uploaded(receive, service)
                return service
            raise TorPublishTimeout(f"no descriptor upload seen in {timeout:.0f} s", service)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(TorControlError):
                await self._call(controller.remove_event_listener, on_event)

    async def remove(self, service_id: str) -> None:
        """Withdraw a service published here (DEL_ONION); unknown ids are ignored."""
        if service_id not in self._services:
            return
        self._services.discard(service_id)
        await self._call(self._require_controller().remove_ephemeral_hidden_service, service_id)

    async def forget_descriptors(self) -> None:
        """Make tor fetch onion descriptors afresh (NEWNYM purges its client-side onion
        cache; tor rate-limits it to one per 10 s).  Only new streams are affected."""
        await self._call(self._require_controller().signal, Signal.NEWNYM)

    def require_socks(self) -> Addr:
        """tor's SOCKS address; LocalError before the launcher was entered."""
        if self.socks is None:
            raise LocalError("use TorLauncher as `async with` before connecting")
        return self.socks

    async def connect(self, onion_address: str, port: int, timeout: float) -> trio.SocketStream:
        """A stream to ``onion_address:port`` through tor; TorConnectError when it fails."""
        socks = self.require_socks()
        try:
            with trio.fail_after(timeout):
                return await socks5_connect(socks, onion_address, port)
        except trio.TooSlowError:
            raise TorConnectError("timeout") from None

    async def aclose(self) -> None:
        """Withdraw our services, close the controller, stop a tor we launched."""
        controller, self._controller = self._controller, None
        if controller is not None:
            for service in sorted(self._services):
                with contextlib.suppress(TorControlError):
                    await self._call(controller.remove_ephemeral_hidden_service, service)
            self._services.clear()
            await trio.to_thread.run_sync(controller.close)
        process, self._process = self._process, None
        if process is not None:
            await trio.to_thread.run_sync(_stop, process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
