"""Targets: what the runner talks to, and what it can do with it.

* :class:`FixedSetup` — a server someone else runs at an address: one shared instance, no fresh
  state, no restart, crashes seen only as an unreachable address.
* :class:`CommandSetup` — a server the runner starts itself from ``--server-cmd``: fresh instances
  on demand, crashes detected as process exits, restarts.
* :class:`InProcessSetup` — the reference server, started inside the runner's event loop.
* :class:`ProxySetup` — a proxy started from ``--proxy-cmd`` in front of an upstream the runner
  plays (or a reference server).

A ``TLS:`` target is reached with the client files the setup is given (``--tls-cert``,
``--tls-key``, ``--tls-ca``); a target the runner starts itself gets the certificates of a
throw-away CA (:class:`~distcache.conformance.pki.RunPKI`): ``{tls_cert}``, ``{tls_key}`` and
``{tls_ca}`` in ``--server-cmd``, which then listens on ``TLS:127.0.0.1:port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import socket
from dataclasses import dataclass, field

from ..address import AddressError, parse_address
from ..netio import ConnectError, open_connection
from ..tls import TLSFiles
from . import launch
from .pki import RunPKI
from .registry import Unsupported

__all__ = [
    "CommandSetup",
    "FixedSetup",
    "InProcessSetup",
    "Instance",
    "ProxySetup",
    "RefusingAddress",
    "TargetUnavailable",
    "bound_loopback_socket",
    "confine_ports",
    "free_tcp_address",
    "reference_server",
]

#: Seconds a started program may take before it accepts connections.
START_TIMEOUT = 10.0
#: Sessions a started server gets when a case does not ask for a capacity (the legacy default).
DEFAULT_SESSIONS = 512
#: ``{max_in_flight}`` of a proxy when a case does not set it (the legacy's fixed bound).
DEFAULT_MAX_IN_FLIGHT = 512


class TargetUnavailable(Exception):
    """The target cannot be reached or started; the message is one line."""


#: Ports free_tcp_address has handed out in this process: never handed out twice.
_handed_out: set[int] = set()
#: ``--ports LOW-HIGH``: every port the runner listens on or hands to a target, when set.
_confined: tuple[int, int] | None = None


def confine_ports(low: int, high: int) -> None:
    """Draw every port the runner uses (targets' and its own listeners') from LOW..HIGH."""
    global _confined
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"port range {low}-{high} is not within 1-65535")
    _confined = (low, high)


def _draw_port() -> int:
    if _confined is not None:
        low, high = _confined
        return low + secrets.randbelow(high - low + 1)
    low = _ephemeral_ports()[0]
    return secrets.randbelow(low - _FIRST_PORT) + _FIRST_PORT if low > _FIRST_PORT else 0


def bound_loopback_socket() -> socket.socket:
    """A TCP socket bound to a loopback port the runner may use (within ``--ports``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if _confined is None:
        sock.bind(("127.0.0.1", 0))
        return sock
    low, high = _confined
    for _ in range(4 * (high - low + 1) + 50):
        port = _draw_port()
        if port in _handed_out:
            continue
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return sock
    sock.close()
    raise TargetUnavailable(f"no free loopback port in --ports {low}-{high}")


def free_tcp_address() -> str:
    """A loopback address for a target process to listen on: a port nobody uses right now.

    Cases run side by side, and the target binds the port only once it has started. A port
    found by binding port 0 comes from the kernel's ephemeral range, where every bind to port 0
    and every outgoing connection also gets its port: one of those (a server or a connection of
    another case) could take it first, and two cases could even be handed the same port. So the
    port is drawn below that range and never twice in one run.
    """
    tries = 200 if _confined is None else 4 * (_confined[1] - _confined[0] + 1) + 50
    for _ in range(tries):
        port = _draw_port()
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # some other program's
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return f"IP:127.0.0.1:{port}"
    where = "" if _confined is None else f" in --ports {_confined[0]}-{_confined[1]}"
    raise TargetUnavailable(f"no free loopback port found{where}")


#: The lowest port free_tcp_address draws: clear of the well-known and most registered ones.
_FIRST_PORT = 20000


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for automatic ports (Linux's setting; elsewhere the IANA range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as setting:
            low, high = (int(word) for word in setting.read().split())
            return low, high
    except (OSError, ValueError):
        return 49152, 65535


class RefusingAddress:
    """A loopback address that refuses every connection until :meth:`close`.

    Its port stays bound, without listening: connecting gets a reset, and no other program (a
    server another case starts meanwhile, say) can be given that port. A port merely found free
    could be handed out again at once while cases run side by side.
    """

    def __init__(self) -> None:
        self._sock = bound_loopback_socket()
        self.address = f"IP:127.0.0.1:{self._sock.getsockname()[1]}"

    async def close(self) -> None:
        self._sock.close()


@dataclass
class Instance:
    """One running target."""

    address: str
    process: asyncio.subprocess.Process | None = None
    server: object | None = None  # an in-process server
    stderr_path: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Files the instance owns besides its log (a UNIX socket), removed when it stops.
    files: list[str] = field(default_factory=list)
    #: How a ``TLS:`` target is reached: the client's certificate, key and the target's CA.
    tls: TLSFiles | None = None
    #: The throw-away CA that issued the target's certificates, when the runner made them.
    pki: RunPKI | None = None

    def exit_status(self) -> int | None:
        """The process's exit status once it has exited (None while running or not a process)."""
        return None if self.process is None else self.process.returncode

    def crash_description(self) -> str:
        status = self.exit_status()
        if status is None:
            return ""
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        tail = _tail(self.stderr_path)
        return f"target process exited ({how})" + (f"; stderr: {tail}" if tail else "")

    async def reachable(self, timeout: float) -> bool:
        try:
            _, writer = await open_connection(self.address, timeout=timeout, tls=self.tls)
        except (ConnectError, OSError):
            return False
        writer.close()
        return True

    async def stop(self) -> None:
        try:
            if self.server is not None:
                await self.server.close()
            if self.process is not None:
                await launch.stop(self.process)
        finally:
            self.remove_files()

    def remove_files(self) -> None:
        for path in (self.stderr_path, *self.files):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _tail(path: str | None, size: int = 200) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


async def _wait_until_accepting(instance: Instance, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    task = asyncio.current_task()
    while loop.time() < deadline:
        if task is not None and task.cancelling():
            raise asyncio.CancelledError  # a cancellation some await swallowed: honour it
        if instance.exit_status() is not None:
            raise TargetUnavailable(f"{what} exited at start-up: {instance.crash_description()}")
        if await instance.reachable(0.5):
            return
        await asyncio.sleep(0.02)
    raise TargetUnavailable(f"{what} did not accept connections within {START_TIMEOUT:g} s")


def _command(template: str, values: dict[str, str], option: str) -> list[str]:
    try:
        words = shlex.split(template)
    except ValueError as error:
        raise TargetUnavailable(f"{option}: {error}") from None
    if not words:
        raise TargetUnavailable(f"{option} is empty")
    try:
        return [word.format(**values) for word in words]
    except (KeyError, IndexError, ValueError) as error:
        raise TargetUnavailable(
            f"{option}: unknown placeholder {error} (known: "
            + ", ".join("{" + k + "}" for k in values)
            + ")"
        ) from None


async def _spawn(
    argv: list[str], address: str, what: str, files: list[str] | None = None, **tls
) -> Instance:
    """Start a target and wait until it accepts; on any failure or cancellation (a case's
    deadline) stop what was started and remove its files before the error goes on."""
    stderr_path = os.path.join(launch.scratch_directory(), f"{what}-{secrets.token_hex(6)}.log")
    instance = Instance(address, stderr_path=stderr_path, files=files or [], **tls)
    try:
        try:
            instance.process = await launch.spawn(argv, stderr_path)
        except OSError as error:
            raise TargetUnavailable(f"cannot start {what} '{argv[0]}': {error.strerror}") from None
        await _wait_until_accepting(instance, what)
    except BaseException:
        if instance.process is not None:
            launch.stop_now(instance.process)
        instance.remove_files()
        raise
    return instance


def _listen_values(template: str) -> tuple[str, dict[str, str], list[str]]:
    """An address for a target to listen on, the placeholders that spell it, and its files.

    ``{path}`` in the template asks for a UNIX socket (in the run's temporary directory);
    otherwise a loopback TCP port is drawn. ``{listen}`` is the address in distcache syntax,
    ``{host}`` and ``{port}`` its parts, for programs with other command lines.
    """
    if "{path}" in template:
        path = launch.socket_path()
        address = f"UNIX:{path}"
        try:
            parse_address(address)
        except AddressError as error:
            raise TargetUnavailable(str(error)) from None
        return address, {"listen": address, "path": path, "host": "", "port": ""}, [path]
    address = free_tcp_address()
    host, port = address.split(":")[1:]
    return address, {"listen": address, "host": host, "port": port, "path": ""}, []


#: What a server command template may use to say where the target listens.
LISTEN_PLACEHOLDERS = ("{listen}", "{port}", "{path}")


class ServerSetup:
    """How the runner obtains server instances. Subclasses say what they can offer."""

    description = ""
    #: Subset of {"fresh", "restart", "process"}.
    capabilities: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._shared: Instance | None = None
        self._lock = asyncio.Lock()
        # Instances lent to cases that need only their own ids absent: instance -> ids used.
        self._pool: dict[int, tuple[Instance, set[bytes]]] = {}
        self._busy: set[int] = set()
        self._pool_lock = asyncio.Lock()

    async def shared(self) -> Instance:
        """The instance that cases without special needs share (started on first use)."""
        async with self._lock:
            if self._shared is None:
                self._shared = await self._start(None)
            return self._shared

    async def restart_shared(self) -> Instance:
        """Replace a crashed shared instance (only with the ``restart`` capability)."""
        if "restart" not in self.capabilities:
            raise Unsupported("this target setup cannot restart the server")
        async with self._lock:
            if self._shared is not None:
                await self._shared.stop()
            self._shared = await self._start(None)
            return self._shared

    async def fresh(self, sessions: int | None) -> Instance:
        """A new instance with an empty cache (of ``sessions`` sessions when given)."""
        if "fresh" not in self.capabilities:
            raise Unsupported("needs a fresh server (give --server-cmd, or run without a target)")
        return await self._start(sessions)

    async def clean(self, touches: frozenset[bytes]) -> Instance:
        """An instance on which none of ``touches`` was ever used (fresh when none is idle).

        Cheaper than :meth:`fresh` per case: cases whose session ids are disjoint cannot tell
        whether they share a server. Give the instance back with :meth:`release`.
        """
        if "fresh" not in self.capabilities:
            raise Unsupported("needs a fresh server (give --server-cmd, or run without a target)")
        async with self._pool_lock:
            for key, (instance, used) in self._pool.items():
                if key in self._busy or instance.exit_status() is not None:
                    continue
                if used.isdisjoint(touches):
                    used.update(touches)
                    self._busy.add(key)
                    return instance
            instance = await self._start(None)
            self._pool[id(instance)] = (instance, set(touches))
            self._busy.add(id(instance))
            return instance

    def release(self, instance: Instance) -> None:
        self._busy.discard(id(instance))

    async def _start(self, sessions: int | None) -> Instance:
        raise NotImplementedError

    async def start_instance(self, sessions: int | None = None) -> Instance:
        """An extra instance the caller owns (and stops)."""
        return await self._start(sessions)

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.stop()
            self._shared = None
        for instance, _ in self._pool.values():
            await instance.stop()
        self._pool.clear()


class FixedSetup(ServerSetup):
    """A server already running at ``address``."""

    capabilities = frozenset()

    def __init__(self, address: str, tls: TLSFiles | None = None):
        super().__init__()
        try:
            parse_address(address).require_connect()
        except AddressError as error:
            raise TargetUnavailable(str(error)) from None
        self.address = address
        self.description = address
        self.tls = tls

    async def _start(self, sessions: int | None) -> Instance:
        instance = Instance(self.address, tls=self.tls)
        if not await instance.reachable(2.0):
            raise TargetUnavailable(f"cannot connect to '{self.address}'")
        return instance


class CommandSetup(ServerSetup):
    """Servers started from a command template: where to listen as ``{listen}`` (distcache
    syntax), ``{host}`` and ``{port}``, or ``{path}`` (a UNIX socket); ``{sessions}`` for the
    capacity; for a TLS server ``{tls_cert}``, ``{tls_key}``, ``{tls_ca}`` (it then listens on
    a TLS address)."""

    capabilities = frozenset({"fresh", "restart", "process"})

    def __init__(self, template: str):
        super().__init__()
        self.template = template
        self.description = template
        if not any(p in template for p in LISTEN_PLACEHOLDERS):
            raise TargetUnavailable("--server-cmd must contain {listen}, {port} or {path}")
        if "{path}" in template and ("{port}" in template or "{host}" in template):
            raise TargetUnavailable(
                "--server-cmd: {path} (UNIX) and {host}/{port} exclude each other"
            )
        uses_tls = any(f"{{{name}}}" in template for name in ("tls_cert", "tls_key", "tls_ca"))
        if uses_tls and "{path}" in template:
            raise TargetUnavailable("--server-cmd: TLS targets listen on TCP, not on {path}")
        self.pki = _run_pki() if uses_tls else None

    async def _start(self, sessions: int | None) -> Instance:
        address, values, files = _listen_values(self.template)
        values["sessions"] = str(sessions or DEFAULT_SESSIONS)
        if self.pki is None:
            argv = _command(self.template, values, "--server-cmd")
            return await _spawn(argv, address, "server", files)
        address = "TLS:" + address.partition(":")[2]
        values.update(self.pki.placeholders(), listen=address)
        argv = _command(self.template, values, "--server-cmd")
        # Without {tls_ca} the server does not require client certificates: present none.
        mutual = "{tls_ca}" in self.template
        tls = self.pki.client_files if mutual else TLSFiles(ca=self.pki.ca)
        return await _spawn(argv, address, "server", files, tls=tls, pki=self.pki)

    async def close(self) -> None:
        await super().close()
        if self.pki is not None:
            self.pki.close()


def reference_server():
    """The reference server's classes, or None while the package lacks them."""
    try:
        from ..cache import MemoryStore
        from ..server.listeners import bind_listeners
        from ..server.server import Server
    except ImportError:
        return None
    return Server, MemoryStore, bind_listeners


class InProcessSetup(ServerSetup):
    """The reference server, inside this process."""

    capabilities = frozenset({"fresh", "restart"})
    description = "reference server (in-process)"

    def __init__(self, *, tls: bool = False) -> None:
        super().__init__()
        self.pki = _run_pki() if tls else None
        if tls:
            self.description = "reference server (in-process, mutual TLS)"
        if reference_server() is None:
            raise TargetUnavailable("the reference server is not available in this installation")
        # The server logs every protocol error the suite provokes on purpose; keep the report clean.
        server_log = logging.getLogger("distcache.server")
        if not server_log.handlers:
            server_log.addHandler(logging.NullHandler())
            server_log.propagate = False

    async def _start(self, sessions: int | None) -> Instance:
        server_class, store_class, bind = reference_server()
        server = server_class(store_class(sessions or DEFAULT_SESSIONS))
        # Within --ports when given; else any free port.
        where = free_tcp_address().partition(":")[2] if _confined else "127.0.0.1:0"
        if self.pki is None:
            await server.start(bind(f"IP:{where}"))
            port = server.sockets[0].getsockname()[1]
            return Instance(f"IP:127.0.0.1:{port}", server=server)
        from ..tls import ServerTLS

        await server.start(bind(f"TLS:{where}", tls=ServerTLS(self.pki.server_files)))
        port = server.sockets[0].getsockname()[1]
        return Instance(
            f"TLS:127.0.0.1:{port}", server=server, tls=self.pki.client_files, pki=self.pki
        )

    async def close(self) -> None:
        await super().close()
        if self.pki is not None:
            self.pki.close()


def _run_pki() -> RunPKI:
    try:
        return RunPKI()
    except ImportError:
        raise TargetUnavailable("the TLS profile needs trustme (pip install trustme)") from None


class ProxySetup:
    """Proxies started from a template with ``{upstream}``, ``{retry_ms}``, ``{idle_ms}`` and
    ``{max_in_flight}`` (the bound on requests in flight upstream; 512 unless a case sets one)
    and where to listen (``{listen}``, ``{host}``/``{port}`` or ``{path}``), one per case, in
    front of an upstream the case provides (``{upstream_host}``/``{upstream_port}`` spell a
    TCP upstream for programs with other command lines)."""

    def __init__(self, template: str):
        self.template = template
        self.description = template
        if not any(p in template for p in LISTEN_PLACEHOLDERS):
            raise TargetUnavailable("--proxy-cmd must contain {listen}, {port} or {path}")
        if not any(p in template for p in ("{upstream}", "{upstream_port}")):
            raise TargetUnavailable("--proxy-cmd must contain {upstream} or {upstream_port}")

    async def start(
        self,
        upstream: str,
        *,
        retry_ms: int = 5000,
        idle_ms: int = 0,
        max_in_flight: int | None = None,
    ) -> Instance:
        if idle_ms and "{idle_ms}" not in self.template:
            raise Unsupported("needs an idle limit: put -idle {idle_ms} in --proxy-cmd")
        if max_in_flight and "{max_in_flight}" not in self.template:
            raise Unsupported(
                "needs a bound on requests in flight: put -maxinflight {max_in_flight} (or your "
                "proxy's option) in --proxy-cmd"
            )
        address, values, files = _listen_values(self.template)
        upstream_host, _, upstream_port = upstream.partition(":")[2].rpartition(":")
        values.update(
            upstream=upstream,
            upstream_host=upstream_host,
            upstream_port=upstream_port,
            retry_ms=str(retry_ms),
            idle_ms=str(idle_ms),
            max_in_flight=str(max_in_flight or DEFAULT_MAX_IN_FLIGHT),
        )
        argv = _command(self.template, values, "--proxy-cmd")
        return await _spawn(argv, address, "proxy", files)
