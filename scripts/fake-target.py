#!/usr/bin/env python3
"""A fake target API for demos: stands in for Kubernetes, a ticketing system, a pager.

Like a real API honouring the `Idempotency-Key` header, it applies each key's effect once and
answers repeats with the first response. Every request is printed as one JSON line; GET /stats
returns {"requests": N, "effects": N, "duplicates": N}.

usage: fake-target.py [PORT]   (default 18080, on 127.0.0.1)
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
EFFECTS = {}
STATS = {"requests": 0, "effects": 0, "duplicates": 0}


class Handler(BaseHTTPRequestHandler):
    def _effect(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        key = self.headers.get("idempotency-key")
        with LOCK:
            STATS["requests"] += 1
            first = key is None or key not in EFFECTS
            if first:
                STATS["effects"] += 1
                if key is not None:
                    EFFECTS[key] = self.path
            else:
                STATS["duplicates"] += 1
        print(json.dumps({"method": self.command, "path": self.path, "idempotency_key": key,
                          "owner": self.headers.get("x-reflex-owner"), "body": body,
                          "effect": "applied" if first else "duplicate (already applied)"}), flush=True)
        self._reply(200, {"applied": first})

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


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18080
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
