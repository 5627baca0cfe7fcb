"""Backend for tests/paths.rs: reports which route IT dispatched, the way a typical Python
handler decides (urllib.parse.unquote, then posixpath.normpath, then a segment-prefix match).

  python paths_backend.py stdlib      http.server on two ports; upgrades answered by hand
                                      (101 + one text frame), stdlib only
  python paths_backend.py websockets  the `websockets` library on two ports; plain GETs
                                      answered from process_request

Prints {"event":"listening","ports":[a,b]}; every answer is JSON {port, route, path}.
"""
import asyncio
import base64
import hashlib
import http
import http.server
import json
import posixpath
import sys
import threading
import urllib.parse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def dispatch(raw):
    path = urllib.parse.urlsplit(raw).path
    p = posixpath.normpath(urllib.parse.unquote(path))
    # normpath keeps a leading "//" (POSIX): a handler splitting on "/" would not.
    p = "/" + p.lstrip("/")
    return "admin" if p == "/admin" or p.startswith("/admin/") else "root"


def frame(text):
    data = text.encode()
    if len(data) < 126:
        return bytes([0x81, len(data)]) + data
    return bytes([0x81, 126]) + len(data).to_bytes(2, "big") + data


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({
            "port": self.server.server_address[1],
            "route": dispatch(self.path),
            "path": self.path,
        })
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers.get("Sec-WebSocket-Key", "")
            accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            self.wfile.write(
                ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode()
                + frame(body))
            self.wfile.flush()
            self.close_connection = True
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("X-Backend", "python-stdlib")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def stdlib():
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(json.dumps({"event": "listening", "ports": [s.server_address[1] for s in servers]}),
          flush=True)
    threading.Event().wait()


async def with_websockets():
    from websockets.asyncio.server import serve

    def report(connection, path):
        return json.dumps({
            "port": connection.local_address[1],
            "route": dispatch(path),
            "path": path,
        })

    def process_request(connection, request):
        if request.headers.get("Upgrade", "").lower() != "websocket":
            resp = connection.respond(http.HTTPStatus.OK, report(connection, request.path))
            resp.headers["X-Backend"] = "python-websockets"
            return resp
        return None

    async def handler(ws):
        await ws.send(report(ws, ws.request.path))
        await ws.wait_closed()

    servers = [await serve(handler, "127.0.0.1", 0, process_request=process_request)
               for _ in range(2)]
    ports = [next(iter(s.sockets)).getsockname()[1] for s in servers]
    print(json.dumps({"event": "listening", "ports": ports}), flush=True)
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    if sys.argv[1:] == ["stdlib"]:
        stdlib()
    elif sys.argv[1:] == ["websockets"]:
        asyncio.run(with_websockets())
    else:
        sys.exit("usage: paths_backend.py stdlib|websockets")
