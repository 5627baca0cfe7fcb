"""Python `websockets` backend: echo, subprotocol `chat.v1` only, permessage-deflate (the
library default), no size limit. The message `please-close` makes it close with 4321.
One JSON line on stdout per event.  usage: python py_server.py PORT"""
import asyncio
import json
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def out(obj):
    print(json.dumps(obj), flush=True)


async def handler(ws):
    out({
        "event": "connection",
        "path": ws.request.path,
        "user": ws.request.headers.get("X-Auth-User"),
        "request_extensions": ws.request.headers.get("Sec-WebSocket-Extensions"),
        "response_extensions": ws.response.headers.get("Sec-WebSocket-Extensions"),
        "subprotocol": ws.subprotocol,
    })
    count = 0
    try:
        async for msg in ws:
            if msg == "please-close":
                await ws.close(4321, "server says bye ✓")
                break
            count += 1
            await ws.send(msg)
    except ConnectionClosed:
        pass
    rcvd = ws.protocol.close_rcvd
    out({
        "event": "close",
        "path": ws.request.path,
        "messages": count,
        "code": rcvd.code if rcvd else None,
        "reason": rcvd.reason if rcvd else None,
    })


async def main():
    port = int(sys.argv[1])
    async with serve(handler, "127.0.0.1", port, subprotocols=["chat.v1"], max_size=None,
                     max_queue=None):
        out({"event": "listening", "port": port})
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
