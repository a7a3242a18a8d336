"""Connect to 127.0.0.1:PORT (retrying while nothing listens yet), send "hello", print the answer.

Usage: localhost_client.py PORT
Prints "got ANSWER"; the partner of localhost_server.py.
"""
import socket
import sys
import time

port = int(sys.argv[1])
for _ in range(100):
    try:
        c = socket.create_connection(("127.0.0.1", port))
        break
    except ConnectionRefusedError:
        time.sleep(0.05)
c.sendall(b"hello")
print("got", c.recv(100).decode(), flush=True)
