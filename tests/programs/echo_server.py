"""The server every backend pod of the service tests runs as its container.

Usage: echo_server.py NAME LISTENER...
Each LISTENER is one of: tcp:P answers one line and closes; udp:P answers each datagram with
one line; sink:P (TCP) greets with one line, reads to EOF, then answers with the byte count and
the SHA-256 of what arrived; mute:P (UDP) receives and never answers, so its flows stay
unreplied in conntrack. A line is "NAME PEER_IP:PEER_PORT PROTO:LOCAL_PORT". Prints
"NAME serving LISTENER..." once every listener runs.
"""
import json
import socket
import sys
import threading

from stream_io import digest_to_end

name = sys.argv[1]

def line(peer, proto, port):
    return f"{name} {peer[0]}:{peer[1]} {proto}:{port}\n".encode()

def tcp_answer(conn, peer, port):
    with conn:
        conn.sendall(line(peer, "tcp", port))

def sink(conn, peer, port):
    with conn:
        conn.settimeout(120)
        conn.sendall(line(peer, "sink", port))
        count, sha256 = digest_to_end(conn)
        try:
            conn.sendall(json.dumps({"bytes": count, "sha256": sha256}).encode())
        except (BrokenPipeError, ConnectionResetError):
            return  # a readiness probe reads the greeting and hangs up; it wants no report

def serve_tcp(port, handler):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(128)
    while True:
        conn, peer = server.accept()
        threading.Thread(target=handler, args=(conn, peer, port), daemon=True).start()

def serve_udp(port, answer):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("0.0.0.0", port))
    while True:
        data, peer = sock.recvfrom(2048)
        if answer:
            sock.sendto(line(peer, "udp", port), peer)

threads = []
for spec in sys.argv[2:]:
    kind, port = spec.split(":")
    port = int(port)
    target, args = {
        "tcp": (serve_tcp, (port, tcp_answer)),
        "sink": (serve_tcp, (port, sink)),
        "udp": (serve_udp, (port, True)),
        "mute": (serve_udp, (port, False)),
    }[kind]
    threads.append(threading.Thread(target=target, args=args, daemon=True))
for thread in threads:
    thread.start()
print(f"{name} serving {' '.join(sys.argv[2:])}", flush=True)
for thread in threads:
    thread.join()
