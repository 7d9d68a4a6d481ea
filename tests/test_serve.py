"""serve.py as a client sees it: a real server process on a free loopback port, spoken to over HTTP. Its text is
sample.py's (a subprocess) for the same request and seed, streamed or not; sessions continue a text as reading it
whole would; every limit and bad request is a 4xx with one JSON line, never a 500, and the server stays up; the
page generates in a real browser."""

import asyncio
import html
import http.client
import json
import math
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import charrnn
import charrnn.server
from charrnn import api, rundir
from charrnn.server import Refused, Sessions, Workers
from tests.test_visualize import chromium, needs_chromium
from tests.train_helpers import ROOT, assert_one_line_error, corpus, run_script, tiny_args, train

TEXT = corpus(2000)
PRIME = "The "


class Server:
    """``python serve.py CKPT FLAGS`` on port 0 (any free one), its address read from its first line."""

    def __init__(self, ckpt: str, log: Path, *flags):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), ckpt, "--port", "0", *map(str, flags)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)  # fmt: skip
        line = self.proc.stdout.readline()
        assert line.startswith("serving "), f"{line}{log.read_text()}"
        self.url = line.split()[-1]
        parsed = urllib.parse.urlsplit(self.url)
        self.host, self.port = parsed.hostname, parsed.port

    def request(self, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict | str]:
        """Status and decoded body (JSON where it is JSON) of one request on a new connection."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        connection.request(method, path, data, {"Content-Type": "application/json"} if data is not None else {})
        response = connection.getresponse()
        text = response.read().decode()
        connection.close()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(text) if kind.startswith("application/json") else text

    def post(self, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict | str]:
        return self.request("POST", path, body, raw)

    def events(self, body: dict) -> list[tuple[str, dict]]:
        """(event, data) of each server-sent event of a streamed generate request."""
        status, text = self.post("/generate", {**body, "stream": True})
        assert status == 200, text
        found = []
        for block in text.split("\n\n")[:-1]:
            event = re.match(r"(?:event: (\w+)\n)?data: (.*)$", block, re.S)
            found.append((event.group(1) or "message", json.loads(event.group(2))))
        return found

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.proc.stdout.close()
        return code, self.log.read_text()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A small trained LSTM (float32: the C sampling loop) with a validation loss."""
    d = tmp_path_factory.mktemp("serve")
    (d / "input.txt").write_text(TEXT, encoding="utf-8")
    args = tiny_args(d / "input.txt", d / "run", "--data.val_fraction", 0.2, "--model.cell", "lstm", steps=30)
    assert train(args) == 0
    return rundir.newest_last_checkpoint(str(d / "run"))


@pytest.fixture(scope="module")
def model(ckpt) -> api.Model:
    return charrnn.load(ckpt)


def _serve(ckpt, tmp_path_factory, *flags):
    server = Server(ckpt, tmp_path_factory.mktemp("log") / "stderr.txt", *flags)
    yield server
    code, stderr = server.stop()
    assert code == 130 and stderr == "interrupted by SIGTERM\n", stderr  # a clean stop, and no traceback ever


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    """serve.py with its defaults (so on 127.0.0.1)."""
    yield from _serve(ckpt, tmp_path_factory)


@pytest.fixture(scope="module")
def strict(ckpt, tmp_path_factory):
    """serve.py with small limits, one worker thread."""
    yield from _serve(ckpt, tmp_path_factory, "--max-body", 3000, "--max-text", 100, "--max-length", 500,
                      "--max-concurrent", 2, "--max-sessions", 2, "--session-ttl", 1.5, "--threads", 1)  # fmt: skip


def test_binds_loopback_and_reports_the_checkpoint(server, model):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.request("GET", "/health") == (200, {"status": "ok", "sessions": 0, "requests": 0})
    status, info = server.request("GET", "/info")
    assert status == 200 and info["vocab"] == model.vocab and info["checkpoint"] == model.path
    assert info["arch"] == {"vocab_size": len(model.vocab), "hidden_size": 16, "cell": "lstm", "num_layers": 1,
                            "dropout": 0.0}  # fmt: skip
    assert info["step"] == model.step == 30 and info["val_loss"] == model.val_loss and model.val_loss > 0


def sample_py(ckpt, *flags) -> str:
    code, out, err = run_script("sample.py", [ckpt, *flags])
    assert code == 0, err
    return out


@pytest.mark.parametrize("request_", [
    {"prime": PRIME, "length": 700, "temperature": 0.8, "seed": 3},
    {"prime": "", "length": 400, "temperature": 1.3, "top_k": 5, "seed": 11, "stop": ["e", "\n\n"]},
], ids=["plain", "top_k-stop"])  # fmt: skip
def test_text_is_sample_pys_streamed_or_not(server, ckpt, request_):
    flags = ["--prime", request_["prime"], "--length", request_["length"], "--temperature", request_["temperature"],
             "--seed", request_["seed"]]  # fmt: skip
    flags += ["--top-k", request_["top_k"]] if "top_k" in request_ else []
    for s in request_.get("stop", []):
        flags += ["--stop", s.replace("\n", "\\n")]
    expected = sample_py(ckpt, *flags)
    status, body = server.post("/generate", request_)
    assert status == 200 and request_["prime"] + body["text"] == expected
    stopped = len(body["text"]) < request_["length"]
    assert body == {"text": body["text"], "stopped": stopped, "seed": request_["seed"], "session": None}
    assert stopped == ("stop" in request_)  # the stop strings do end this text early
    events = server.events(request_)
    assert [e for e, _ in events] == ["message"] * (len(events) - 1) + ["done"]
    assert "".join(data["text"] for _, data in events[:-1]) == body["text"]
    assert len(events) - 1 == math.ceil(len(body["text"]) / 256) >= (1 if stopped else 3)  # a slice at a time
    assert events[-1][1] == {"stopped": stopped, "seed": request_["seed"], "session": None}


def test_a_request_without_a_seed_reports_the_one_it_drew(server):
    status, body = server.post("/generate", {"prime": PRIME, "length": 50})
    assert status == 200 and isinstance(body["seed"], int)
    assert server.post("/generate", {"prime": PRIME, "length": 50, "seed": body["seed"]})[1] == body


def test_a_session_continues_as_the_whole_text_would(server, model):
    """Greedy: what the session generates after each new piece is what a fresh run over the whole text so far
    generates (the API from the zero state); appended text stays in the session, unless ``append`` is false."""
    status, created = server.post("/sessions", {})
    assert status == 200 and created["expires_after"] == 600
    name, whole = created["session"], ""
    for prime, append in (("The ", True), ("time ", False), ("was ", True), ("", True)):
        status, body = server.post("/generate", {"session": name, "prime": prime, "length": 40, "temperature": 0,
                                                 "append": append})  # fmt: skip
        whole += prime
        assert status == 200 and body["text"] == model.sample(40, prime=whole, temperature=0)
        whole += body["text"] if append else ""
    assert server.request("GET", "/health")[1]["sessions"] >= 1


def test_a_session_that_does_not_append_is_a_request_with_the_whole_text(server):
    """``append`` false: each request's text is a plain request's whose prime is everything typed so far (and whose
    seed is the session's)."""
    name = server.post("/sessions", {"seed": 9})[1]["session"]
    typed = ""
    for prime in ("The ", "time ", "", "was "):
        typed += prime
        reply = server.post("/generate", {"session": name, "prime": prime, "length": 300, "append": False})[1]
        assert reply["text"] == server.post("/generate", {"prime": typed, "length": 300, "seed": 9})[1]["text"]


def test_a_session_draws_as_the_apis_session(server, model):
    """Seeded: the session's uniforms go on across requests, streamed or not, as one api.Session's do."""
    status, created = server.post("/sessions", {"seed": 5})
    assert status == 200 and created["seed"] == 5
    reference = model.session(seed=5)
    for prime, length, stream in (("The ", 300, False), ("and ", 30, True), ("", 600, False)):
        reference.feed(prime)
        expected = reference.sample(length, temperature=0.9)
        request_ = {"session": created["session"], "prime": prime, "length": length, "temperature": 0.9}
        if stream:
            events = server.events(request_)
            text = "".join(data["text"] for _, data in events[:-1])
            assert events[-1][1] == {"stopped": False, "seed": 5, "session": created["session"]}
        else:
            text = server.post("/generate", request_)[1]["text"]
        assert text == expected
    assert server.request("DELETE", f"/sessions/{created['session']}")[0] == 200
    status, body = server.post("/generate", {"session": created["session"], "prime": "x"})
    assert status == 404 and "POST /sessions" in body["error"]


def test_score_is_the_apis(server, model):
    text = TEXT[:500] + "\u00e9"
    status, body = server.post("/score", {"text": text, "log_probs": True})
    expected = model.score(text)
    # Another process, another torch thread count: float32 sums in another order.
    assert status == 200 and body["nats"] == pytest.approx(expected.nats, rel=1e-6)
    assert body["bits"] == pytest.approx(expected.bits, rel=1e-6) and body["chars"] == expected.chars == 499
    assert body["unknown"] == 1 and body["unknown_chars"] == ["\u00e9"] and body["log_probs"][-1] is None
    assert body["log_probs"][:-1] == pytest.approx(expected.log_probs[:-1].tolist(), rel=1e-5, abs=1e-6)


def assert_refused(reply, status: int, *fragments: str) -> None:
    got, body = reply
    assert got == status and isinstance(body, dict) and list(body) == ["error"], reply
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])


@pytest.mark.parametrize("path, body, status, fragments", [
    ("/generate", b"{not json", 400, ("not valid JSON",)),
    ("/generate", b"\xff\xfe", 400, ("JSON",)),
    ("/generate", b"[1, 2]", 400, ("JSON object",)),
    ("/generate", {"length": "5"}, 400, ("length",)),
    ("/generate", {"length": True}, 400, ("length",)),
    ("/generate", {"lenght": 5}, 400, ("unknown field 'lenght'",)),
    ("/generate", {"length": -1}, 400, ("length must be 0 or more",)),
    ("/generate", {"temperature": -0.5}, 400, ("temperature must be a finite number >= 0",)),
    ("/generate", {"temperature": 1e-320}, 400, ("temperature", "use 0 for greedy")),
    ("/generate", {"top_k": 0}, 400, ("top_k must be 1 or more",)),
    ("/generate", {"seed": -3}, 400, ("seed must be 0 or more",)),
    ("/generate", {"prime": "\u00e9t\u00e9"}, 400, ("prime has characters not in the model's vocabulary",)),
    ("/generate", {"prime": "\ud800"}, 400, ("surrogate",)),
    ("/generate", {"stop": [""]}, 400, ("stop strings must be non-empty",)),
    ("/generate", {"stop": ["a", 3]}, 400, ("stop[1]",)),
    ("/generate", {"stop": "\u00e9"}, 400, ("stop", "vocabulary")),
    ("/generate", {"stop": ["a"] * 65}, 400, ("stop has 65 strings; at most 64",)),
    ("/generate", {"session": "nobody"}, 404, ("no session 'nobody'", "POST /sessions")),
    ("/generate", {"session": "\ud800"}, 404, ("no session '\\ud800'",)),
    ("/generate", {"session": "nobody", "seed": 1}, 400, ("seed belongs to the session",)),
    ("/score", {"text": "a"}, 400, ("fewer than 2 characters",)),
    ("/score", {"text": "\u00e9\u00e9\u00e9"}, 400, ("nothing to score",)),
    ("/score", {}, 400, ("text: Field required",)),
    ("/sessions", {"seed": 1.5}, 400, ("seed",)),
], ids=lambda v: v if isinstance(v, str) else None)  # fmt: skip
def test_bad_requests_are_400s_that_say_why(server, path, body, status, fragments):
    raw = body if isinstance(body, bytes) else None
    assert_refused(server.post(path, None if raw else body, raw), status, *fragments)


def test_unknown_routes_and_methods(server):
    assert_refused(server.request("GET", "/nothing"), 404, "GET /nothing")
    assert_refused(server.request("GET", "/generate"), 405, "GET /generate")
    assert_refused(server.request("DELETE", "/sessions/nobody"), 404, "no session 'nobody'")


def test_limits_are_4xx_that_name_the_flag(strict):
    assert_refused(strict.post("/generate", {"prime": "x" * 101}), 413, "101 characters", "--max-text")
    assert_refused(strict.post("/score", {"text": "x" * 101}), 413, "--max-text")
    assert_refused(strict.post("/generate", {"length": 501}), 413, "length 501", "--max-length", "session")
    assert_refused(strict.post("/generate", raw=b'{"prime": "' + b" " * 3000 + b'"}'), 413, "3000 bytes", "--max-body")
    assert strict.post("/generate", {"length": 500})[0] == 200
    # Two sessions at most; one expires 1.5 s after its last request, and then it is gone and one may be created.
    first, second = (strict.post("/sessions")[1]["session"] for _ in range(2))
    assert_refused(strict.post("/sessions"), 429, "2 sessions", "--max-sessions", "DELETE /sessions/")
    time.sleep(1.0)
    assert strict.post("/generate", {"session": second, "length": 5})[0] == 200  # second: used again, kept
    time.sleep(0.7)
    assert_refused(strict.post("/generate", {"session": first, "length": 5}), 404, "expired after 1.5 s idle")
    assert strict.post("/sessions")[0] == 200
    assert strict.post("/generate", {"session": second, "length": 5})[0] == 200


def test_concurrent_requests_beyond_the_limit_are_429(strict):
    """Two requests in progress (their bodies still arriving) hold the server's two places; a third is refused, and
    once they end (one finished, one abandoned), requests are served again."""
    held = []
    for _ in range(2):
        sock = socket.create_connection((strict.host, strict.port))
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 20\r\n\r\n{")  # fmt: skip
        held.append(sock)
    wait_for_requests(strict, 2)  # GET is never refused
    assert_refused(strict.post("/generate", {"length": 5}), 429, "busy with 2 requests", "--max-concurrent")
    held[0].sendall(b'"length": 5}' + b" " * 7)
    assert held[0].recv(4096).startswith(b"HTTP/1.1 200")
    for sock in held:
        sock.close()
    wait_for_requests(strict, 0)
    assert strict.post("/generate", {"length": 5})[0] == 200


def wait_for_requests(server: Server, n: int) -> None:
    """Until the server counts ``n`` requests in progress (10 s at most)."""
    deadline = time.monotonic() + 10
    while server.request("GET", "/health")[1]["requests"] != n:
        assert time.monotonic() < deadline, f"the server never counted {n} requests in progress"
        time.sleep(0.02)


def test_a_session_serves_one_request_at_a_time(model):
    """A session is busy from a request's start to its end (a stream's included): a second request is a 409."""
    sessions = Sessions(Workers(model, 1), limit=4, ttl=60)
    name = sessions.create(seed=1)
    entry = sessions.take(name)
    with pytest.raises(Refused, match="busy with another request") as refused:
        sessions.take(name)
    assert refused.value.status == 409
    with pytest.raises(Refused, match="busy"):
        sessions.delete(name)
    sessions.give_back(name, entry, None)
    assert sessions.take(name) is entry


def test_a_body_that_does_not_arrive_is_a_408(model, monkeypatch):
    """The limiter in this process, its wait cut to 0.1 s: a client that sends headers and no body is answered."""
    monkeypatch.setattr(charrnn.server, "BODY_SECONDS", 0.1)
    limiter, sent = charrnn.server.app(model), []

    async def never():
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/generate", "headers": [(b"content-length", b"10")]}
    asyncio.run(asyncio.wait_for(limiter(scope, never, send), 5))
    assert sent[0]["status"] == 408 and "did not arrive within 0.1 s" in json.loads(sent[1]["body"])["error"]
    assert limiter.active == 0


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4),
                           max_leaves=10)  # fmt: skip
FIELDS = ["prime", "length", "temperature", "top_k", "seed", "stop", "stream", "session", "append", "text",
          "log_probs"]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/generate", "/score", "/sessions"]),
       body=st.one_of(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6), JSON_VALUES,
                      st.binary(max_size=40)))  # fmt: skip
def test_drawn_bodies_never_get_a_5xx(strict, path, body):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, reply = strict.post(path, raw=raw)
    assert status < 500, reply
    assert status == 200 or (isinstance(reply, dict) and list(reply) == ["error"]), reply


def test_drawn_bodies_left_the_server_up(strict):
    assert strict.request("GET", "/health")[0] == 200
    assert "Traceback" not in strict.log.read_text() and strict.proc.poll() is None


@pytest.mark.parametrize("flags, fragments", [
    (["--port", "70000"], ("--port must be from 0 to 65535",)),
    (["--threads", "0"], ("--threads must be 1 or more",)),
], ids=["port", "threads"])  # fmt: skip
def test_bad_flags_are_one_line_errors(ckpt, flags, fragments):
    code, out, err = run_script("serve.py", [ckpt, *flags])
    assert code == 2 and out == ""
    assert_one_line_error(err, *fragments)


def test_a_bad_checkpoint_and_a_taken_port_are_one_line_errors(ckpt, server, tmp_path):
    code, out, err = run_script("serve.py", [tmp_path / "missing.ckpt"])
    assert code == 2 and out == ""
    assert_one_line_error(err, "missing.ckpt")
    code, out, err = run_script("serve.py", [ckpt, "--port", server.port])
    assert code == 2 and out == ""
    assert_one_line_error(err, f"port {server.port}", "in use", "another --port")


# The served page with its relative addresses pointing at the server, and a user's actions: type a prime, set the
# length, press generate; then the output's length after each change, and the end, for --dump-dom. (A file harness
# cannot reach into a page in a frame from the server's origin, so the page itself is the harness.)
DRIVER = """<pre id="result"></pre><script>
window.addEventListener("load", () => {
  const button = document.getElementById("generate"), output = document.getElementById("output"), seen = [];
  new MutationObserver(records => records.forEach(r => r.addedNodes.forEach(n => seen.push(n.textContent.length))))
    .observe(output, {childList: true});
  document.getElementById("prime").value = PRIME;
  document.getElementById("length").value = "1000";
  button.click();
  const look = () => {
    if (!button.disabled) {
      const status = document.getElementById("status").textContent, model = document.getElementById("model");
      document.getElementById("result").textContent = JSON.stringify(
        {seen, text: output.textContent, status, model: model.textContent});
      return;
    }
    setTimeout(look, 2);
  };
  look();
});
</script>"""


@needs_chromium
def test_the_page_streams_text_after_the_prime_in_chromium(server, tmp_path):
    status, page = server.request("GET", "/")
    assert status == 200 and "<textarea" in page
    assert not re.search(r"https?:|//[\w.-]+\.|\bsrc\s*=|url\(|@import|<link", page, re.I)  # nothing from elsewhere
    harness = page.replace("<head>", f'<head><base href="{server.url}">', 1)
    harness = harness.replace("</body>", DRIVER.replace("PRIME", json.dumps(PRIME)) + "</body>")
    path = tmp_path / "harness.html"
    path.write_text(harness, encoding="utf-8")
    # From a file page, the server is another origin: --disable-web-security lets the page's fetches reach it, and
    # the loopback address is kept out of the helper's resolver that maps every host to nothing.
    dom = chromium(tmp_path, path.as_uri(), "--dump-dom", "--disable-web-security", "--virtual-time-budget=30000",
                   "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")  # fmt: skip
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert found and found.group(1), dom[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["status"] == "" and result["text"].startswith(PRIME) and len(result["text"]) == len(PRIME) + 1000
    assert result["seen"] == [len(PRIME) + min(1000, 256 * i) for i in range(5)]  # the prime, then each slice
    assert result["model"].startswith("lstm 1 x 16,")
