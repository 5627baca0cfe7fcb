"""Python `websockets` client that waits for the gateway to close it and reports the close
frame it got.  usage: python session_client.py URL
Prints {"event": "open"} once connected, then one result line {"code": .., "reason": ..}."""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def out(o):
    print(json.dumps(o), flush=True)


async def main():
    url = sys.argv[1]
    async with connect(url, open_timeout=10) as ws:
        out({"event": "open"})
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except ConnectionClosed as e:
            rcvd = e.rcvd
            out({"event": "closed", "code": rcvd.code if rcvd else None,
                 "reason": rcvd.reason if rcvd else None})


asyncio.run(main())
