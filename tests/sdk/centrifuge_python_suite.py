"""Run centrifuge-python's own test suite against a running Groupcast.

    python centrifuge_python_suite.py WS_URL TOKEN_SECRET [--timeout S] [--budget S]
                                      [-k SUBSTR] [--verbose]

WS_URL is the server's client endpoint (ws://HOST:PORT/connection/websocket),
TOKEN_SECRET its `client.token_hmac_secret`. The server must run with the
configuration the suite expects: tests/sdk/centrifuge_python.toml. This
script starts no server.

What it does:

1. Takes the pinned sdist (centrifuge-python 0.7.0, which ships `tests/`)
   from the cache ($XDG_CACHE_HOME/groupcast-sdk, else ~/.cache/groupcast-sdk),
   or downloads it there with pip; either way the sha256 must match.
2. Unpacks it into a temporary directory and points its tests at this
   server: the suite hardcodes `localhost:8000` and the token secret
   "secret" (centrifuge-python's docker-compose.yml), and reads neither from
   the environment. Only those literals are rewritten; a missing one is an
   error (the pin changed under us).
3. Runs every test case (the suite's own `unittest` discovery, like its
   `make test`) in child processes, one test at a time, each with a time
   limit (--timeout, 30 s): the suite has none, and a test whose server
   misbehaves hangs forever because the SDK reconnects. A test over the
   limit is a hang; the child is killed and the next test runs in a new
   child. Past --budget (the whole run, 600 s) the tests left fail as not
   run, so the summary always comes.
4. SKIP below lists the tests that fail because of a named Groupcast gap.
   They still run: failing (or hanging) is expected and counts as skipped,
   passing is an error, so the list stays honest.

Prints a line per test to stderr and, last on stdout, one JSON summary:
{"ok":..,"passed":N,"skipped":N,"skipped_by_sdk":N,"failed":[...]}, where
`skipped` counts SKIP entries and `skipped_by_sdk` the tests the suite skips
itself (unittest skips, e.g. a test that needs python-socks to be absent).
Exits 0 only if ok. Standard library only (the tests need `websockets` and
`protobuf`, pinned in tests/sdk/requirements.txt; run it with that venv).
"""

import argparse
import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse

SDIST_NAME = "centrifuge-python"
SDIST_VERSION = "0.7.0"
SDIST_FILE = "centrifuge_python-0.7.0.tar.gz"
SDIST_SHA256 = "11252b45c3f6b6104cfb07fb0fcfc9d2d62832d2af14715dd16fdc5e9c6e5964"

# Test id -> the Groupcast gap that makes it fail. Only gaps that can be
# named precisely; never flakiness. Keep docs/sdks.md in step.
SKIP = {}

DEFAULT_TIMEOUT = 30.0
DEFAULT_BUDGET = 600.0
MARK = "@@groupcast-suite@@ "
PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "ws_proxy",
    "wss_proxy",
    "all_proxy",
    "socks_proxy",
    "no_proxy",
)


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# --- 1. the pinned sdist ------------------------------------------------------


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "groupcast-sdk")


def pinned_sdist():
    """Path of the verified sdist in the cache, downloading it if needed."""
    cached = os.path.join(cache_dir(), SDIST_FILE)
    if os.path.isfile(cached):
        if sha256_of(cached) == SDIST_SHA256:
            return cached
        log(f"{cached}: sha256 mismatch, downloading again")
        os.remove(cached)
    os.makedirs(cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            tmp,
            f"{SDIST_NAME}=={SDIST_VERSION}",
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = os.path.join(tmp, SDIST_FILE)
        if run.returncode != 0 or not os.path.isfile(got):
            sys.exit(f"pip download {SDIST_NAME}=={SDIST_VERSION} failed:\n{run.stdout}{run.stderr}")
        digest = sha256_of(got)
        if digest != SDIST_SHA256:
            sys.exit(f"{SDIST_FILE}: sha256 {digest}, expected {SDIST_SHA256}")
        os.replace(got, cached)
    return cached


# --- 2. unpack and point the tests at this server ---------------------------


def unpack(sdist, into):
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python without extraction filters: refuse odd members.
            for m in tar.getmembers():
                if m.name.startswith("/") or ".." in m.name.split("/") or m.issym() or m.islnk():
                    sys.exit(f"{sdist}: unexpected member {m.name}")
            tar.extractall(into)  # noqa: S202 - checked above.
    root = os.path.join(into, SDIST_FILE[: -len(".tar.gz")])
    if not os.path.isdir(os.path.join(root, "tests")):
        sys.exit(f"{sdist} has no tests/")
    return root


def retarget(root, ws_url, secret):
    """Rewrite the suite's hardcoded server address and token secret."""
    u = urllib.parse.urlsplit(ws_url)
    if u.scheme not in ("ws", "wss") or not u.netloc:
        sys.exit(f"not a ws:// URL: {ws_url}")
    http = f"{'https' if u.scheme == 'wss' else 'http'}://{u.netloc}"
    swaps = [
        ('"ws://localhost:8000/connection/websocket"', json.dumps(ws_url)),
        ('"http://localhost:8000"', json.dumps(http)),
        ('hmac_secret = "secret"', f"hmac_secret = {json.dumps(secret)}"),
    ]
    found = dict.fromkeys((s for s, _ in swaps), 0)
    tests = os.path.join(root, "tests")
    for name in sorted(os.listdir(tests)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(tests, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = text
        for old, repl in swaps:
            found[old] += new.count(old)
            new = new.replace(old, repl)
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
    missing = [s for s, n in found.items() if n == 0]
    if missing:
        sys.exit(f"the suite no longer contains {missing}: update retarget()")


# --- 3. run every test with a time limit --------------------------------------


def list_tests(root, env):
    code = (
        "import json, unittest\n"
        "ids = []\n"
        "def walk(s):\n"
        "    for t in s:\n"
        "        walk(t) if isinstance(t, unittest.TestSuite) else ids.append(t.id())\n"
        "walk(unittest.defaultTestLoader.discover('tests', top_level_dir='.'))\n"
        "print(json.dumps(ids))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        sys.exit(f"cannot list the suite's tests:\n{run.stdout}{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def child_main(ids):
    """In the child (cwd: the sdist root): run `ids` one by one, report each."""
    import unittest

    sys.path.insert(0, os.getcwd())

    class Result(unittest.TestResult):
        def __init__(self):
            super().__init__()
            self.problems = []
            self.sdk_skip = None

        def addError(self, test, err):
            super().addError(test, err)
            self.problems.append(self._exc_info_to_string(err, test))

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self.problems.append(self._exc_info_to_string(err, test))

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                self.problems.append(f"{subtest.id()}: " + self._exc_info_to_string(err, test))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self.sdk_skip = reason

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self.problems.append("unexpected success of an expectedFailure test")

    for test_id in ids:
        print(MARK + json.dumps({"start": test_id}), flush=True)
        started = time.monotonic()
        result = Result()
        unittest.defaultTestLoader.loadTestsFromName(test_id).run(result)
        if result.problems:
            outcome, detail = "fail", "\n".join(result.problems)
        elif result.sdk_skip is not None:
            outcome, detail = "sdk-skip", result.sdk_skip
        else:
            outcome, detail = "pass", ""
        report = {"id": test_id, "outcome": outcome, "detail": detail}
        report["seconds"] = round(time.monotonic() - started, 2)
        print(MARK + json.dumps(report), flush=True)


def run_tests(root, env, ids, timeout, budget, verbose):
    """{test id: (outcome, detail, seconds)}; outcome pass/fail/hang/sdk-skip,
    or not-run for the tests left when the whole run's budget is spent."""
    results = {}
    todo = list(ids)
    budget_end = time.monotonic() + budget
    while todo:
        if time.monotonic() >= budget_end:
            for test_id in todo:
                results[test_id] = ("not-run", f"the suite's {budget:g}s budget was spent", 0.0)
            break
        cmd = [sys.executable, os.path.abspath(__file__), "--child", *todo]
        child = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        lines = queue.Queue()

        def pump(stream=child.stdout, out=lines):
            for line in stream:
                out.put(line)
            out.put(None)

        threading.Thread(target=pump, daemon=True).start()
        current, output, deadline = None, [], budget_end
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:  # Over the test's limit, or the budget.
                child.kill()
                child.wait()
                if current is None:
                    break  # The budget ran out between tests.
                tail = "".join(output[-40:])
                limit = "the suite's budget" if deadline == budget_end else f"{timeout:g}s"
                took = round(time.monotonic() - started, 2)
                results[current] = ("hang", f"no result within {limit}\n{tail}", took)
                todo.remove(current)
                break
            if line is None:  # The child exited.
                child.wait()
                if current is not None:  # ... in the middle of a test.
                    tail = "".join(output[-40:])
                    why = f"the test process exited ({child.returncode})\n{tail}"
                    results[current] = ("fail", why, 0.0)
                    todo.remove(current)
                elif todo:
                    sys.exit(f"the test process exited ({child.returncode}) before {todo[0]}")
                break
            if not line.startswith(MARK):
                output.append(line)
                if verbose:
                    sys.stderr.write(line)
                continue
            msg = json.loads(line[len(MARK) :])
            if "start" in msg:
                current, output, started = msg["start"], [], time.monotonic()
                deadline = min(started + timeout, budget_end)
                continue
            detail = msg["detail"]
            if msg["outcome"] == "fail":
                detail += "\n--- output ---\n" + "".join(output[-40:])
            results[msg["id"]] = (msg["outcome"], detail, msg["seconds"])
            todo.remove(msg["id"])
            current, deadline = None, budget_end
            if not todo:  # Done; a child that does not exit is not waited for.
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                break
    return results


# --- 4. judge -----------------------------------------------------------------


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ws_url", help="ws://HOST:PORT/connection/websocket")
    p.add_argument("secret", help="the server's client.token_hmac_secret")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per test")
    p.add_argument(
        "--budget", type=float, default=DEFAULT_BUDGET, help="seconds for the whole run"
    )
    p.add_argument("-k", dest="only", default="", help="run only test ids containing this")
    p.add_argument("--verbose", action="store_true", help="echo the tests' output")
    args = p.parse_args()

    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    sdist = pinned_sdist()
    with tempfile.TemporaryDirectory(prefix="centrifuge-python-") as tmp:
        root = unpack(sdist, tmp)
        retarget(root, args.ws_url, args.secret)
        ids = list_tests(root, env)
        unknown = sorted(set(SKIP) - set(ids))
        if unknown:
            sys.exit(f"SKIP names tests the suite does not have: {unknown}")
        if args.only:
            ids = [i for i in ids if args.only in i]
        started = time.monotonic()
        results = run_tests(root, env, ids, args.timeout, args.budget, args.verbose)

    passed, skipped, sdk_skipped, failed = 0, 0, 0, []
    for test_id in ids:
        outcome, detail, seconds = results[test_id]
        if outcome == "not-run":
            failed.append(test_id)
            verdict = "FAILED (not run)"
        elif test_id in SKIP:
            if outcome in ("fail", "hang"):
                skipped += 1
                verdict = f"skipped ({outcome}; {SKIP[test_id]})"
            else:
                failed.append(test_id)
                verdict = f"FAILED: {outcome}, but it is in SKIP: remove it from the list"
        elif outcome == "pass":
            passed += 1
            verdict = "pass"
        elif outcome == "sdk-skip":
            sdk_skipped += 1
            verdict = f"skipped by the suite ({detail})"
        else:
            failed.append(test_id)
            verdict = f"FAILED ({outcome})"
        log(f"{test_id} ... {verdict} [{seconds:.1f}s]")
        if verdict.startswith("FAILED") and detail:
            log(re.sub(r"(?m)^", "    ", detail.rstrip()))
    log(f"{len(ids)} tests in {time.monotonic() - started:.0f}s")
    summary = {
        "ok": not failed and passed + skipped > 0,
        "passed": passed,
        "skipped": skipped,
        "skipped_by_sdk": sdk_skipped,
        "failed": failed,
    }
    print(json.dumps(summary), flush=True)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
