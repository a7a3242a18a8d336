"""Accept one TCP connection, read it to the end, answer "done" and report what arrived.

Usage: tcp_sink.py PORT
Prints "listening" once bound, then one JSON object: the peer's address, the byte count and
the SHA-256 of the data.
"""
import json
import socket
import sys

from stream_io import digest_to_end
port = int(sys.argv[1])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port))
server.listen(1)
server.settimeout(30)
print("listening", flush=True)
conn, peer = server.accept()
conn.settimeout(30)
count, sha256 = digest_to_end(conn)
conn.sendall(b"done")
conn.close()
print(json.dumps({"peer": peer[0], "bytes": count, "sha256": sha256}), flush=True)
