"""What the examples' backends share (Python standard library only): Groupcast's HTTP API over
kept-alive connections, and the check of the signed batches Groupcast POSTs to an HTTP target.

    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # examples/
    from groupcast_backend import Api, verified

    api = Api("http://127.0.0.1:8000/api", "the API key")
    api.call("relay_send", {"client": client_id, "text": "hello"})
    if not verified(b"the target's secret", self.headers, body): ...   # then answer 401

A team copying one example takes this file with it.
"""

import hashlib
import hmac
import http.client
import json
import threading
import time
import urllib.parse

# Signed batches older or newer than this are refused (docs/backends.md, "Signatures").
MAX_AGE = 300


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


class Api:
    """Groupcast's server API (docs/api.md) over one kept-alive HTTP connection per thread."""

    def __init__(self, url, key):
        u = urllib.parse.urlsplit(url)
        self.host, self.path, self.key = u.netloc, u.path.rstrip("/"), key
        self.local = threading.local()

    def call(self, method, params):
        """The answer's JSON (`{"result": ...}` or `{"error": ...}`; errors are logged)."""
        body = json.dumps(params)
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, timeout=5)
            try:
                conn.request("POST", f"{self.path}/{method}", body,
                             {"X-API-Key": self.key, "Content-Type": "application/json"})
                res = conn.getresponse()
                raw = res.read()
                try:
                    answer = json.loads(raw or b"{}")
                except ValueError:
                    # Not the API's answer: the load balancer's own (a 502 when the edge that
                    # had the request died). Whether it ran is unknown, so it is not sent again.
                    answer = {"error": {"code": res.status, "message": raw[:200].decode("utf-8", "replace")}}
                break
            except (OSError, http.client.HTTPException):
                # The connection went stale (an edge behind the load balancer died): once more.
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        if "error" in answer:
            log(f"api {method} {params.get('client', '')}: {answer['error']}")
        return answer

    def batch(self, commands):
        """Several commands in one call (`batch`, run in parallel)."""
        if commands:
            self.call("batch", {"commands": commands, "parallel": True})


def verified(secret, headers, body, purpose=b"relay"):
    """A batch is Groupcast's: `X-Groupcast-Signature` is the HMAC-SHA256 of
    `<purpose>.<timestamp>.<body>` with the target's secret, and the timestamp is within
    MAX_AGE of this clock."""
    ts = headers.get("X-Groupcast-Timestamp", "")
    signed = purpose + b"." + ts.encode() + b"." + body
    want = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    fresh = ts.isdigit() and abs(time.time() - int(ts)) <= MAX_AGE
    return hmac.compare_digest(want, headers.get("X-Groupcast-Signature", "")) and fresh
