"""A TCP connection to a sink listener of echo_server.py, held open until told to finish.

Usage: held_connection.py HOST PORT TIMEOUT
Connects and prints the sink's greeting; then waits for a line on stdin, sends a few bytes,
closes its side and reads the sink's report until it closes too, for at most TIMEOUT seconds.
Prints {"answer": TEXT | null, "error": null | "timeout" | ERRNO NAME}: a connection a policy
has cut meanwhile gets no answer, since its packets are dropped silently.
"""
import errno
import json
import socket
import sys

host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
conn = socket.create_connection((host, port), timeout=timeout)
greeting = b""
while not greeting.endswith(b"\n"):
    chunk = conn.recv(1)
    if not chunk:
        break
    greeting += chunk
print(greeting.decode().strip(), flush=True)
sys.stdin.readline()
answer, error = b"", None
try:
    conn.sendall(b"still there?\n")
    conn.shutdown(socket.SHUT_WR)
    while chunk := conn.recv(4096):
        answer += chunk
except socket.timeout:
    error = "timeout"
except OSError as exc:
    error = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps({"answer": answer.decode() if answer and error is None else None,
                  "error": error}), flush=True)
