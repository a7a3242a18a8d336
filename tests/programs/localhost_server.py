"""Accept one connection on 127.0.0.1:PORT and echo what it sends, prefixed with "echo:".

Usage: localhost_server.py PORT
Prints "listening" once bound; for the test that two containers of a pod share localhost.
"""
import socket
import sys

port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.sendall(b"echo:" + c.recv(100))
c.close()
