"""Python `websockets` client through wsgate: deflate, 5 MB, 1,000 in flight, subprotocols,
close codes both ways. Prints one JSON result line.  usage: python py_client.py URL AUTH"""
import asyncio
import hashlib
import json
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def main():
    url, auth = sys.argv[1], sys.argv[2]
    r = {}
    kw = dict(additional_headers={"Authorization": auth}, subprotocols=["chat.v2", "chat.v1"],
              max_size=None, max_queue=None, compression="deflate", open_timeout=10)
    async with connect(url + "/a", **kw) as ws:
        r["subprotocol"] = ws.subprotocol
        r["response_extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        r["negotiated"] = [type(e).__name__ for e in ws.protocol.extensions]
        big = os.urandom(5 * 1024 * 1024)
        await ws.send(big)
        back = await asyncio.wait_for(ws.recv(), 30)
        r["big_ok"] = isinstance(back, bytes) and hashlib.sha256(back).digest() == hashlib.sha256(big).digest()
        # A compressible 5 MB text too (exercises deflate for real).
        text = ("wsgate " * 800_000)[: 5 * 1024 * 1024]
        await ws.send(text)
        r["big_text_ok"] = (await asyncio.wait_for(ws.recv(), 30)) == text
        msgs = [f"m{i:04d}" for i in range(1000)]
        await asyncio.gather(*(ws.send(m) for m in msgs))
        got = [await asyncio.wait_for(ws.recv(), 10) for _ in msgs]
        r["inflight_ok"] = got == msgs
        await ws.close(4123, "client says bye ☃")
        r["client_close_sent"] = True
    async with connect(url + "/b", **kw) as ws:
        await ws.send("please-close")
        try:
            await asyncio.wait_for(ws.recv(), 10)
            r["server_close"] = "no close"
        except ConnectionClosed as e:
            r["server_close_code"] = e.rcvd.code if e.rcvd else None
            r["server_close_reason"] = e.rcvd.reason if e.rcvd else None
    print(json.dumps(r), flush=True)


asyncio.run(main())
