#!/usr/bin/env python3
"""The ceiling for one curl client: a bare HTTP/1.1 server that answers any request with
one file through os.sendfile and closes. Prints its port. Usage: sendfile-server.py FILE"""
import os, socket, sys
path = sys.argv[1]; size = os.path.getsize(path)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept(); c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
    with open(path, "rb") as f:
        off = 0
        while off < size: off += os.sendfile(c.fileno(), f.fileno(), off, size - off)
    c.close()
