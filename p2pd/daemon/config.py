"""The daemon's settings: command-line options over an optional TOML file (``--config``).

Theory of operation
-------------------
Settings come from three places, the later overriding the earlier: built-in defaults,
the TOML file, the command line.  The file may name sessions to join at start, each by a
*passphrase file* — never by an inline passphrase, which would sit in a config file that
is often world-readable, copied around or committed.  A ``passphrase`` key is refused
with an error saying what to do instead.  Unknown keys are refused too, so a typo never
silently changes behaviour.  Example (see docs/daemon.md)::

    log_level = "info"              # debug | info | warning | error

    [api]
    address = "127.0.0.1:3000"      # or "unix:/run/user/1000/p2pd.sock"
    allow_remote = false            # a non-loopback address needs true

    [node]
    interfaces = ["eth0"]           # LAN discovery only there (default: all)
    mdns = true
    beacons = true

    stun = ["stun.example.net:3478"]   # STUN servers (none by default)
    assists = ["relay.example.net:7000"]  # assist relays (p2pd relay)
    upnp = true                     # ask the gateway for a port mapping
    tcp = true                      # TCP listener and fallback

    [tor]                           # the flags --tor, --tor-only, --tor-control, --tor-config
    enabled = true                  # race Tor as the last resort (a tor of p2pd's own)
    only = false                    # nothing leaves outside Tor
    control = "127.0.0.1:9051"      # use a running tor instead (password: $P2PD_TOR_PASSWORD)
    config = "~/.config/p2pd/torrc" # extra torrc lines for the tor p2pd launches

    [[sessions]]
    passphrase_file = "~/.config/p2pd/team.phrase"

The API listens on loopback unless the user explicitly allows otherwise
(:func:`parse_api_address`): the token is the only thing between the network and
every session.
"""

from __future__ import annotations

import argparse
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pd.cli_tor import tor_settings
from p2pd.errors import LocalError
from p2pd.node import NodeConfig
from p2pd.udp import Addr

#: API address used when neither the command line nor the file names one.
DEFAULT_API = "127.0.0.1:3000"
#: Log levels accepted in the file, by their logging module names.
LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})
#: Log level with ``--foreground`` (every lifecycle event) and without it (problems only).
FOREGROUND_LOG_LEVEL = "info"
QUIET_LOG_LEVEL = "warning"
#: Prefix of a unix-socket API address.
UNIX_PREFIX = "unix:"
#: Largest config file read, against a wrong path pointing at something huge.
MAX_CONFIG_BYTES = 1024 * 1024
#: Host names that always mean loopback.
LOOPBACK_NAMES = frozenset({"localhost"})

_TOP_KEYS = frozenset({"log_level", "api", "node", "tor", "sessions"})
_API_KEYS = frozenset({"address", "allow_remote"})
_NODE_KEYS = frozenset(
    {"interfaces", "mdns", "beacons", "port", "targets", "stun", "assists", "upnp", "tcp"}
)
_SESSION_KEYS = frozenset({"passphrase_file"})
#: ``[tor]`` keys and the command-line option each one stands for.
_TOR_KEYS = {"enabled": "tor", "only": "tor_only", "control": "tor_control", "config": "tor_config"}


class ConfigError(LocalError):
    """The config file or an option is unusable (exit code 2)."""


@dataclass(frozen=True, slots=True)
class ApiAddress:
    """Where the API listens: a TCP host and port, or a unix socket path."""

    host: str = ""
    port: int = 0
    unix_path: Path | None = None

    @property
    def bind(self) -> str:
        """The address in Hypercorn's ``bind`` syntax."""
        if self.unix_path is not None:
            return f"{UNIX_PREFIX}{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.unix_path is not None or self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(slots=True)
class DaemonConfig:
    """Everything :func:`p2pd.daemon.run_daemon` needs besides the state directory."""

    api: ApiAddress
    allow_remote: bool = False
    log_level: str = QUIET_LOG_LEVEL
    node: NodeConfig = field(default_factory=NodeConfig)
    passphrase_files: list[Path] = field(default_factory=list)


def parse_api_address(text: str, *, allow_remote: bool) -> ApiAddress:
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:/path``; refuse a non-loopback host unless
    ``allow_remote``."""
    if text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX) :]
        if not path:
            raise ConfigError("--api unix: needs a path, e.g. unix:/run/user/1000/p2pd.sock")
        return ApiAddress(unix_path=Path(path).expanduser())
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"--api must be HOST:PORT or unix:/path, not {text!r}")
    address = ApiAddress(host=host.strip("[]") or "127.0.0.1", port=int(port_text))
    if not address.is_loopback and not allow_remote:
        raise ConfigError(
            f"--api {text} is not a loopback address: anyone who can reach it and steal the "
            "token controls every session. Add --api-allow-remote if you really mean it"
        )
    return address


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


def _check_keys(table: Any, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"config: {where} must be a table")
    if where == "[tor]" and "password" in table:
        raise ConfigError(
            "config: [tor] password is not accepted (config files get copied and shared); "
            "set the environment variable P2PD_TOR_PASSWORD instead"
        )
    if where.startswith("[[sessions]]") and "passphrase" in table:
        raise ConfigError(
            "config: inline passphrases are not accepted (config files get copied and "
            'shared); put the passphrase in a 0600 file and write passphrase_file = "PATH"'
        )
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"config: unknown key {unknown[0]!r} in {where}")
    return table


def _typed(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    wrong_bool = kind is not bool and isinstance(value, bool)  # TOML true is not a port
    if value is not None and (not isinstance(value, kind) or wrong_bool):
        raise ConfigError(f"config: {where}.{key} must be a {kind.__name__}")
    return value


def _parse_target(text: str) -> Addr:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"target must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def load(args: argparse.Namespace) -> DaemonConfig:
    """Merge the defaults, ``--config FILE`` and the command line (see the module docstring)."""
    config_path = getattr(args, "config", None)
    doc = _read_toml(Path(config_path).expanduser()) if config_path else {}
    doc = _check_keys(doc, _TOP_KEYS, "the top level")
    api_table = _check_keys(doc.get("api", {}), _API_KEYS, "[api]")
    node_table = _check_keys(doc.get("node", {}), _NODE_KEYS, "[node]")
    sessions = doc.get("sessions", [])
    if not isinstance(sessions, list):
        raise ConfigError("config: sessions must be an array of tables ([[sessions]])")

    passphrase_files: list[Path] = []
    for index, entry in enumerate(sessions):
        table = _check_keys(entry, _SESSION_KEYS, f"[[sessions]] #{index + 1}")
        name = _typed(table, "passphrase_file", str, "sessions")
        if not name:
            raise ConfigError(f"config: [[sessions]] #{index + 1} needs passphrase_file")
        passphrase_files.append(Path(name).expanduser())

    log_level = _typed(doc, "log_level", str, "log_level") or (
        FOREGROUND_LOG_LEVEL if getattr(args, "foreground", False) else QUIET_LOG_LEVEL
    )
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"config: log_level must be one of {', '.join(sorted(LOG_LEVELS))}")

    allow_remote = bool(getattr(args, "api_allow_remote", False)) or bool(
        _typed(api_table, "allow_remote", bool, "api")
    )
    api_text = getattr(args, "api", None) or _typed(api_table, "address", str, "api") or DEFAULT_API
    api = parse_api_address(api_text, allow_remote=allow_remote)

    interfaces = getattr(args, "interfaces", None) or node_table.get("interfaces")
    if interfaces is not None and (
        not isinstance(interfaces, list) or not all(isinstance(i, str) for i in interfaces)
    ):
        raise ConfigError("config: node.interfaces must be a list of interface names")
    targets_text = list(getattr(args, "target", None) or node_table.get("targets") or [])
    if not all(isinstance(t, str) for t in targets_text):
        raise ConfigError("config: node.targets must be a list of HOST:PORT strings")
    stun_text = _address_list(args, node_table, "stun", "stun")
    assist_text = _address_list(args, node_table, "assist", "assists")
    upnp = _typed(node_table, "upnp", bool, "node")
    tcp = _typed(node_table, "tcp", bool, "node")
    mdns = _typed(node_table, "mdns", bool, "node")
    beacons = _typed(node_table, "beacons", bool, "node")
    tor = tor_settings(_with_tor_table(args, doc.get("tor", {})))
    only = tor is not None and tor.only
    if only and (targets_text or stun_text or assist_text):
        raise ConfigError("config: --tor-only sends nothing outside Tor: drop targets/stun/assists")
    node = NodeConfig(
        port=getattr(args, "port", None) or _typed(node_table, "port", int, "node"),
        interfaces=interfaces,
        mdns=not (getattr(args, "no_mdns", False) or only) and mdns is not False,
        beacons=not (getattr(args, "no_beacon", False) or only) and beacons is not False,
        targets=tuple(_parse_target(t) for t in targets_text),
        stun=tuple(_parse_target(t) for t in stun_text),
        assists=tuple(_parse_target(t) for t in assist_text),
        portmap=not (getattr(args, "no_upnp", False) or only) and upnp is not False,
        tcp=not (getattr(args, "no_tcp", False) or only) and tcp is not False,
        tor=tor,
    )
    return DaemonConfig(
        api=api,
        allow_remote=allow_remote,
        log_level=log_level,
        node=node,
        passphrase_files=passphrase_files,
    )


def _with_tor_table(args: argparse.Namespace, table: Any) -> argparse.Namespace:
    """``args`` with each Tor option the command line left unset taken from ``[tor]``."""
    table = _check_keys(table, frozenset(_TOR_KEYS), "[tor]")
    merged = argparse.Namespace(**vars(args))
    for key, option in _TOR_KEYS.items():
        kind = bool if key in ("enabled", "only") else str
        value = _typed(table, key, kind, "tor")
        if value is not None and not getattr(args, option, None):
            setattr(merged, option, str(Path(value).expanduser()) if key == "config" else value)
    return merged


def _address_list(
    args: argparse.Namespace, node_table: dict[str, Any], option: str, key: str
) -> list[str]:
    """HOST:PORT strings from ``--option`` (repeatable) or the file's ``node.key`` list."""
    texts = list(getattr(args, option, None) or node_table.get(key) or [])
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError(f"config: node.{key} must be a list of HOST:PORT strings")
    return texts
