"""Loopback receivers for alert tests: a real SMTP server (aiosmtpd) and a Slack-webhook HTTP
server. Both record what they receive; both bind 127.0.0.1 on a free port."""
from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """aiosmtpd on loopback; `.messages` holds email.message.EmailMessage objects."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                               policy=email.policy.default)
                msg["X-Envelope-To"] = ",".join(envelope.rcpt_tos)
                sink.messages.append(msg)
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    def conn_json(self, from_email="slimeflow@localhost") -> str:
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
                           "extra": {"from_email": from_email, "disable_tls": True,
                                     "disable_ssl": True, "timeout": 10, "retry_limit": 0}})

    @staticmethod
    def body(msg) -> str:
        part = msg.get_body(preferencelist=("html", "plain"))
        return part.get_content() if part is not None else ""

    def wait(self, n=1, timeout=30.0):
        end = time.time() + timeout
        while len(self.messages) < n and time.time() < end:
            time.sleep(0.1)
        return self.messages


class WebhookSink:
    """An HTTP server that answers like a Slack incoming webhook ("ok") and keeps the JSON."""

    def __init__(self):
        self.posts = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"_raw": body.decode(errors="replace")}
                sink.posts.append({"path": self.path, "json": payload})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/services/T000/B000/XXXX"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def conn_json(self) -> str:
        return json.dumps({"conn_type": "slackwebhook", "password": self.url})

    def wait(self, n=1, timeout=30.0):
        end = time.time() + timeout
        while len(self.posts) < n and time.time() < end:
            time.sleep(0.1)
        return self.posts
