#!/usr/bin/env python3
"""An OpenAI-compatible embeddings endpoint (POST /v1/embeddings) for the
demo and the tests: deterministic feature-hashing vectors, no model to
download. Standard library only.

    embed_server.py PORT [--key KEY] [--dim N]

With --key, requests must carry `Authorization: Bearer KEY` (401 otherwise).
A request's `dimensions` shortens the vectors (as newer OpenAI models allow).
"""
import hashlib
import json
import math
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def embed(text, dim):
    v = [0.0] * dim
    for word in text.lower().split():
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        v[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


def main():
    port = int(sys.argv[1])
    key = sys.argv[sys.argv.index("--key") + 1] if "--key" in sys.argv else None
    default_dim = int(sys.argv[sys.argv.index("--dim") + 1]) if "--dim" in sys.argv else 64

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != "/v1/embeddings":
                return self.answer(404, {"error": {"message": "not found"}})
            if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
                return self.answer(401, {"error": {"message": "invalid api key"}})
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
            dim = int(req.get("dimensions") or default_dim)
            data = [{"object": "embedding", "index": i, "embedding": embed(t, dim)}
                    for i, t in enumerate(inputs)]
            self.answer(200, {"object": "list", "model": req.get("model"), "data": data,
                              "usage": {"prompt_tokens": 0, "total_tokens": 0}})

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
