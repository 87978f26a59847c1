#!/usr/bin/env python3
# A TCP proxy that paces what an upstream sends to one rate shared by every connection (a
# slow link to a remote registry), and logs each request as "METHOD PATH RANGE" ("-" for no
# Range header). Used by bench/lazy-range.sh, bench/fleet.sh and the end-to-end tests (ThrottledUpstream).
#
#   python3 bench/throttle.py LISTEN_PORT TARGET_PORT BYTES_PER_SECOND STRIP_RANGE LOG
#
# BYTES_PER_SECOND 0: unpaced. STRIP_RANGE 1: drop Range headers, so the upstream looks like
# one without range support. Clients must send no request bodies (registry pulls send none).
import socket, sys, threading, time

listen, target, rate, strip, logpath = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
lock = threading.Lock()
state = {"next": time.monotonic()}
log = open(logpath, "a", buffering=1)

def pace(n):
    if rate <= 0:
        return
    with lock:
        now = time.monotonic()
        state["next"] = max(state["next"], now) + n / rate
        due = state["next"]
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)

def close(*sockets):
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def requests(src, dst):
    # The mirror sends no request bodies: the stream is heads only.
    pending = b""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            pending += data
            if pending[:1] == b"\x16":
                break  # a TLS handshake (skopeo tries HTTPS first): refuse at once, so it falls back to HTTP
            while b"\r\n\r\n" in pending:
                head, pending = pending.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                ranges = [l.split(b":", 1)[1].strip() for l in lines[1:] if l.lower().startswith(b"range:")]
                log.write("%s %s %s\n" % (method.decode(), path.decode(), ranges[0].decode() if ranges else "-"))
                if strip:
                    lines = [l for l in lines if not l.lower().startswith(b"range:")]
                dst.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
    except OSError:
        pass
    finally:
        close(src, dst)

def answers(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            pace(len(data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        close(src, dst)

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", listen))
server.listen(64)
while True:
    client, _ = server.accept()
    upstream = socket.create_connection(("127.0.0.1", target))
    threading.Thread(target=requests, args=(client, upstream), daemon=True).start()
    threading.Thread(target=answers, args=(upstream, client), daemon=True).start()
