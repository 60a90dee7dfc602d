#!/usr/bin/env python3
"""A fake target API for demos and the main job: stands in for Kubernetes, a ticketing system,
a pager.

Like a real API honouring the `Idempotency-Key` header, it applies each key's effect once and
answers repeats with the first response. Every request is printed as one JSON line (the request
log the main job checks: `effect` is `applied` or `duplicate (already applied)`). GET /stats
returns {"requests": N, "effects": N, "duplicates": N, "keys": N}.

Failure modes, for the fault-injection suite (scripts/faults), switched at run time with
POST /control?mode=MODE[&delay_ms=N] (answers the mode now in force):
  ok       the default: apply and answer 200;
  fail     answer 503 and apply nothing (an API that is down);
  timeout  apply the effect, then answer only after delay_ms (default 10000): the caller
           times out without knowing the effect happened, as with a slow real API.
Control requests are not logged as requests.

usage: fake-target.py [PORT]   (default 18080, on 127.0.0.1)
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
EFFECTS = {}
STATS = {"requests": 0, "effects": 0, "duplicates": 0, "keys": 0}
MODE = {"mode": "ok", "delay_ms": 10000}


class Handler(BaseHTTPRequestHandler):
    # Keep-alive: the actor reuses its connections, as it would with a real API.
    protocol_version = "HTTP/1.1"

    def _effect(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        key = self.headers.get("idempotency-key")
        if self.path.startswith("/control"):
            return self._control()
        with LOCK:
            mode, delay_ms = MODE["mode"], MODE["delay_ms"]
            STATS["requests"] += 1
            if mode == "fail":
                print(json.dumps({"method": self.command, "path": self.path, "idempotency_key": key,
                                  "effect": "none (failed: 503)"}), flush=True)
                return self._reply(503, {"error": "injected failure"})
            first = key is None or key not in EFFECTS
            if first:
                STATS["effects"] += 1
                if key is not None:
                    EFFECTS[key] = self.path
                    STATS["keys"] += 1
            else:
                STATS["duplicates"] += 1
            # Printed under the lock so lines never interleave.
            print(json.dumps({"method": self.command, "path": self.path, "idempotency_key": key,
                              "owner": self.headers.get("x-reflex-owner"), "body": body,
                              "effect": "applied" if first else "duplicate (already applied)"}),
                  flush=True)
        if mode == "timeout":
            time.sleep(delay_ms / 1000)
        self._reply(200, {"applied": first})

    def _control(self):
        from urllib.parse import parse_qs, urlparse
        q = parse_qs(urlparse(self.path).query)
        with LOCK:
            if q.get("mode", [""])[0] in ("ok", "fail", "timeout"):
                MODE["mode"] = q["mode"][0]
            if q.get("delay_ms"):
                MODE["delay_ms"] = int(q["delay_ms"][0])
            self._reply(200, dict(MODE))

    def _reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                self._reply(200, dict(STATS))
        else:
            self._reply(404, {"error": "not found"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _effect

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A caller that timed out and hung up makes the late reply fail. socketserver would print
        # a traceback to stderr, which shares the log file and could split a request line in two
        # (the checker then missed an applied effect). One JSON line instead, under the lock.
        with LOCK:
            print(json.dumps({"event": "reply failed", "error": repr(sys.exc_info()[1])}), flush=True)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18080
    Server(("127.0.0.1", port), Handler).serve_forever()
