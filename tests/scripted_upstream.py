"""A scripted distcache server for proxy, snoop and load-test tests: it decodes requests with the
sans-IO core and answers what a test function says, so a test can make it slow, wrong or rude."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from serverproc import ServerThread

from distcache.protocol import NEED_DATA, Closed, MessageDecoder, RemoteProtocolError, Request
from distcache.server import bind_listeners
from distcache.wire import Direction

#: ``script(request, connection_number)`` returns the bytes to send back (b"" for nothing),
#: ``CLOSE`` to drop the connection, or an awaitable of either (to answer late).
Script = Callable[[Request, int], object]
CLOSE = object()


@dataclass
class ScriptedUpstream:
    thread: ServerThread
    script: Script
    #: Every request received, as (connection number, request).
    requests: list[tuple[int, Request]] = field(default_factory=list)
    connections: int = 0
    _listener: asyncio.AbstractServer | None = None

    def start(self, listen: str = "IP:127.0.0.1:0") -> str:
        async def start():
            [sock] = bind_listeners(listen)
            self._listener = await asyncio.start_server(self._serve, sock=sock)
            host, port = sock.getsockname()[:2]
            return f"IP:{host}:{port}"

        self.address = self.thread.call(start())
        return self.address

    def stop(self) -> None:
        async def stop():
            self._listener.close()
            for task in asyncio.all_tasks():
                if task.get_name().startswith("scripted-"):
                    task.cancel()

        self.thread.call(stop())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        asyncio.current_task().set_name(f"scripted-{number}")
        decoder = MessageDecoder(receives=Direction.REQUEST)
        try:
            while True:
                event = decoder.next_event()
                if event is NEED_DATA:
                    decoder.receive_data(await reader.read(65536))
                    continue
                if type(event) is Closed:
                    return
                self.requests.append((number, event))
                answer = self.script(event, number)
                if asyncio.iscoroutine(answer):
                    asyncio.get_running_loop().create_task(self._late(answer, writer))
                    continue
                if answer is CLOSE:
                    return
                writer.write(answer)
        except (RemoteProtocolError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _late(self, answer, writer: asyncio.StreamWriter) -> None:
        data = await answer
        if data is CLOSE:
            writer.close()
        elif not writer.is_closing():
            writer.write(data)
