#!/usr/bin/env python3
"""Reproductions of three findings of issue 16, run against any regcache build:
before (a build from before the issue) and after, same script, same machine.

  connections  1 100 idle TCP connections, then GET /v2/ on a new one; then
               2 000 half-sent requests: how many are still open after 15 s,
               and how long SIGTERM takes with them open.
  redirect     the upstream answers a manifest GET with a 307 whose Location
               carries user:secret@ and points at a second loopback listener:
               what that listener receives, and what the client gets.
  rot          a blob is pulled, one byte of its stored file is flipped, and
               it is asked for again over 20 s: how many answers had the wrong
               bytes (the new build runs with scrub_interval = "5s").

Usage: scripts/issue16-repro.py BIN {connections,redirect,rot} [--scrub]
Everything listens on 127.0.0.1/127.0.0.2; the upstream is in this process.
Every process started is killed at the end, also on failure.
"""

import hashlib
import http.server
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(handler, host="127.0.0.1"):
    server = Upstream((host, free_port(host)), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def default_fd_limit():
    """The server starts as a service does: a soft limit of 1 024 open files
    (the hard limit above it is what a build may raise it to)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


class Regcache:
    def __init__(self, binary, upstream_url, extra_storage=""):
        self.dir = tempfile.TemporaryDirectory(prefix="repro16-")
        self.port = free_port()
        config = os.path.join(self.dir.name, "regcache.toml")
        with open(config, "w") as f:
            f.write(
                f'[server]\nlisten = "127.0.0.1:{self.port}"\n\n'
                f'[storage]\ndata_dir = "{self.dir.name}/data"\nmax_size = "1GB"\n{extra_storage}\n'
                f'[[upstream]]\nname = "up.test"\nurl = "{upstream_url}"\ndefault = true\n'
            )
        log = open(os.path.join(self.dir.name, "log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", config], stdout=log, stderr=log, preexec_fn=default_fd_limit
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("regcache did not start: " + open(log.name).read())

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def get(url, timeout=10):
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), time.monotonic() - started
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - started
    except Exception as e:  # a hang: the timeout
        return type(e).__name__, b"", time.monotonic() - started


def connections(binary):
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))

    class Closed(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

    upstream = serve(Closed)
    cache = Regcache(binary, f"http://127.0.0.1:{upstream.server_port}")
    try:
        idle = [socket.create_connection(("127.0.0.1", cache.port)) for _ in range(1100)]
        status, _, took = get(cache.url("/v2/"), timeout=10)
        print(f"GET /v2/ beside 1 100 idle connections: {status} in {took:.2f} s")
        for s in idle:
            s.close()
        time.sleep(1)
        half = []
        refused = 0
        for _ in range(2000):
            try:
                s = socket.create_connection(("127.0.0.1", cache.port), timeout=2)
            except OSError:
                refused += 1
                if refused == 5:
                    break
                continue
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
            half.append(s)
        print(f"half-sent requests: {len(half)} connected, {refused} connections timed out"
              + (" (gave up)" if refused == 5 else ""))
        time.sleep(15)
        still_open = answered = 0
        for s in half:
            try:
                answered += s.recv(1) != b""  # b"": closed without an answer
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
        print(f"half-sent requests after 15 s: {still_open} of {len(half)} still open, "
              f"{answered} answered before closing")
        started = time.monotonic()
        cache.proc.send_signal(signal.SIGTERM)
        try:
            cache.proc.wait(timeout=60)
            print(f"SIGTERM with them open: exited in {time.monotonic() - started:.2f} s")
        except subprocess.TimeoutExpired:
            print("SIGTERM with them open: still running after 60 s")
        for s in half:
            s.close()
    finally:
        cache.stop()
        upstream.shutdown()


def redirect(binary):
    seen = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            body = b"<html>internal page</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    target = serve(Target, host="127.0.0.2")

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/v2/":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(307)
            self.send_header("Location", f"http://user:secret@127.0.0.2:{target.server_port}/m")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    upstream = serve(Redirecting)
    cache = Regcache(binary, f"http://127.0.0.1:{upstream.server_port}")
    try:
        for i in range(2):
            status, body, _ = get(cache.url("/v2/app/manifests/latest"))
            print(f"GET manifest by tag, try {i + 1}: {status} {body[:160]!r}")
        print(f"requests at the redirect target: {len(seen)}, Authorization headers: {seen}")
    finally:
        cache.stop()
        upstream.shutdown()
        target.shutdown()


def rot(binary, scrub):
    blob = os.urandom(1 << 20)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    class Blobs(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"" if self.path == "/v2/" else blob
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Docker-Content-Digest", digest)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    upstream = serve(Blobs)
    extra = 'scrub_interval = "5s"\nscrub_rate = "100MiB"\n' if scrub else ""
    cache = Regcache(binary, f"http://127.0.0.1:{upstream.server_port}", extra)
    try:
        status, body, _ = get(cache.url(f"/v2/app/blobs/{digest}"))
        assert status == 200 and body == blob, status
        time.sleep(1)
        hexd = digest.split(":")[1]
        path = f"{cache.dir.name}/data/blobs/sha256/{hexd[:2]}/{hexd}"
        with open(path, "r+b") as f:
            f.seek(12345)
            byte = f.read(1)
            f.seek(12345)
            f.write(bytes([byte[0] ^ 0xFF]))
        wrong = right = 0
        first_right = None
        started = time.monotonic()
        while time.monotonic() - started < 20:
            status, body, _ = get(cache.url(f"/v2/app/blobs/{digest}"))
            if status == 200 and body == blob:
                right += 1
                first_right = first_right or time.monotonic() - started
            else:
                wrong += 1
            time.sleep(0.5)
        after = f"{first_right:.1f} s" if first_right else "never"
        print(f"over 20 s after the flip: {wrong} answers with wrong bytes, {right} right; "
              f"first right answer after {after}")
    finally:
        cache.stop()
        upstream.shutdown()


if __name__ == "__main__":
    binary, what = sys.argv[1], sys.argv[2]
    if what == "connections":
        connections(binary)
    elif what == "redirect":
        redirect(binary)
    elif what == "rot":
        rot(binary, "--scrub" in sys.argv)
    else:
        raise SystemExit(__doc__)
