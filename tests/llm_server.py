"""A minimal OpenAI-compatible chat server on loopback, scripted per test.

It answers ``POST /v1/chat/completions`` the way llama.cpp's server, Ollama and vLLM do, and can
also misbehave on purpose: answer late, fail with an HTTP status, send malformed JSON, or redirect.
It binds 127.0.0.1 on a free port, serves in a daemon thread and records the requests it got.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedChatServer:
    """``with ScriptedChatServer() as server: server.reply(content=...); server.url``.

    Behaviours (set with :meth:`reply`): ``content`` (a normal answer), ``delay`` (seconds before
    answering), ``status`` (an HTTP error), ``raw`` (bytes sent as the body), ``redirect`` (a URL).
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.behaviour: dict = {"content": "ok"}
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                owner.requests.append({"path": self.path, "json": json.loads(body or b"{}")})
                b = dict(owner.behaviour)
                if b.get("delay"):
                    owner._stop.wait(b["delay"])
                if b.get("redirect"):
                    self.send_response(302)
                    self.send_header("Location", b["redirect"])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if b.get("status"):
                    payload = b'{"error": {"message": "scripted failure"}}'
                    self.send_response(b["status"])
                else:
                    payload = b["raw"] if "raw" in b else json.dumps({
                        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                        "model": owner.requests[-1]["json"].get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": b.get("content")}}],
                    }).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reply(self, **behaviour) -> None:
        self.behaviour = behaviour

    def __enter__(self) -> "ScriptedChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
