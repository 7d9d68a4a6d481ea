"""serve.py's HTTP server: a checkpoint's Model (charrnn/api.py) behind a JSON API, on FastAPI and uvicorn.

Generation is sliced: a request's work (feeding its prime, drawing its text) is cut into slices of up to SLICE
characters, each run on a pool of worker threads (one api.Session per thread, restored to the request's own
SessionState, so no request ever holds a thread between slices). The pool's queue is first come, first served, so
concurrent requests take turns slice by slice, and a long one cannot starve short ones. The LSTM's C generator
releases the GIL, so the workers use as many cores as there are threads. Named sessions are SessionStates kept
between requests (a few kB each: the hidden state, the generator's state, the last 4,096 characters), bounded in
number and dropped after an idle time. docs/serve.md describes the API and every limit.
"""

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict
from starlette.exceptions import HTTPException

from . import api
from .errors import UsageError, one_line
from .sampling import encode_prime

SLICE = 256  # characters fed or drawn per turn on a worker (~10 ms for a 1 x 256 LSTM)
BODY_SECONDS = 10.0  # a body must arrive within this, so that a slow client cannot hold a place for long
FEED_SLICE = 1024  # characters of a prime fed per turn (feeding is cheaper than drawing per character)
MAX_STOPS = 64  # stop strings of a request: each is looked for in every piece of text drawn
# The Model API names an argument by its sample.py flag; the server by its JSON field.
_FIELDS = {"--length": "length", "--temperature": "temperature", "--top-k": "top_k", "--seed": "seed",
           "--stop": "stop"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request and the server may hold; serve.py's flags of the same names."""

    max_body: int = 1 << 20  # bytes of a request body
    max_text: int = 20_000  # characters of a prime or of a text to score
    max_length: int = 10_000  # characters one request may generate
    max_concurrent: int = 64  # POST requests in progress at once (the rest are refused, not queued)
    max_sessions: int = 1000  # named sessions kept at once
    session_ttl: float = 600.0  # seconds a session lives after the end of its last request
    threads: int = 2  # worker threads generating and scoring


class Refused(Exception):
    """A request the server will not serve: an HTTP status and one line saying what to change."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status)


def _usage(e: UsageError) -> Refused:
    message = str(e)
    for flag, field in _FIELDS.items():
        message = message.replace(flag + " ", field + " ")
    return Refused(400, message)


class Workers:
    """The thread pool that runs every slice of generation and every scoring, each thread with its own Session."""

    def __init__(self, model: api.Model, threads: int):
        self.model = model
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="charrnn")
        self._local = threading.local()
        self.zero = model.arch.zero_state(1, torch.float64)[0].numpy()  # (L * K, H)
        self.checker = model.session()  # checks stop strings in the event loop's thread, never generates

    def fresh(self, seed: int) -> api.SessionState:
        """A session's state before any text: the zero state, the generator of ``seed``."""
        return api.SessionState(self.zero, np.random.default_rng(seed).bit_generator.state, "")

    async def run(self, fn: Callable, *args):
        """``fn(*args)`` on a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def step(self, state: api.SessionState, fn: Callable[[api.Session], object]):
        """``fn(session)`` on a worker's Session restored to ``state``; its result and the state after it."""
        return await self.run(self._step, state, fn)

    def _step(self, state, fn):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self.model.session()
        session.restore(state)
        return fn(session), session.state()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass
class _Entry:
    state: api.SessionState
    seed: int
    used: float  # time.monotonic() at the end of its last request
    busy: bool = False


class Sessions:
    """Named SessionStates: at most ``limit``, each dropped ``ttl`` seconds after the end of its last request."""

    def __init__(self, workers: Workers, limit: int, ttl: float):
        self._workers, self.limit, self.ttl = workers, limit, ttl
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()  # least recently used first

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            name, entry = next(iter(self._entries.items()))
            if entry.busy or now - entry.used < self.ttl:
                return  # a busy session is at the front only until its request ends and moves it to the back
            del self._entries[name]

    def create(self, seed: int) -> str:
        self._expire()
        if len(self._entries) >= self.limit:
            oldest = next(iter(self._entries.values()))
            wait = max(0, math.ceil(self.ttl - (time.monotonic() - oldest.used)))
            raise Refused(429, f"{self.limit} sessions are open, the server's limit (serve.py --max-sessions); "
                               f"delete one you are done with (DELETE /sessions/ID) or retry in {wait} s, "
                               "when the least recently used one expires")  # fmt: skip
        name = secrets.token_urlsafe(12)
        self._entries[name] = _Entry(self._workers.fresh(seed), seed, time.monotonic())
        return name

    def take(self, name: str) -> _Entry:
        """The session ``name``, marked busy until ``give_back``."""
        self._expire()
        entry = self._entries.get(name)
        if entry is None:
            raise Refused(404, f"no session {name!r}: it never existed or expired after {self.ttl:g} s idle; create "
                               "one (POST /sessions) and send the whole text as its first prime")  # fmt: skip
        if entry.busy:
            raise Refused(409, f"session {name!r} is busy with another request; send the next one when it is done")
        entry.busy = True
        return entry

    def give_back(self, name: str, entry: _Entry, state: api.SessionState | None) -> None:
        """End a request on ``name``: its new state (None: unchanged), its idle time starting now."""
        if state is not None:
            entry.state = state
        entry.busy, entry.used = False, time.monotonic()
        self._entries.move_to_end(name)

    def delete(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None:
            raise Refused(404, f"no session {name!r} (it may have expired)")
        if entry.busy:
            raise Refused(409, f"session {name!r} is busy with a request; delete it when that is done")
        del self._entries[name]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateRequest(_Body):
    prime: str = ""
    length: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = []  # one, or a list
    stream: bool = False
    session: str | None = None
    append: bool = True


class ScoreRequest(_Body):
    text: str
    log_probs: bool = False


class SessionRequest(_Body):
    seed: int | None = None


@dataclasses.dataclass
class _Generation:
    """One generate request, checked: what it feeds and draws, and the state it starts from."""

    prime: str
    length: int
    temperature: float
    top_k: int | None
    stops: list[str]
    state: api.SessionState  # where it is: at first before the prime, then after the prime, then after each slice
    seed: int
    session: str | None
    entry: _Entry | None
    append: bool
    fed: api.SessionState | None = None  # the state after the prime
    stopped: bool = False  # a stop string ended the text


class Limiter:
    """ASGI middleware: a body over ``max_body`` bytes is a 413, one that takes over BODY_SECONDS to arrive a 408,
    a POST beyond ``max_concurrent`` in progress a 429, all before the application sees the request. A request is in
    progress until its response (a stream included) has ended or its client has gone."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits, self.active = app, limits, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limits = self.limits
        if self.active >= limits.max_concurrent:
            return await _error(429, f"the server is busy with {self.active} requests, its limit (serve.py "
                                     "--max-concurrent); retry in a moment")(scope, receive, send)  # fmt: skip
        self.active += 1
        try:
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            size = int(declared) if declared.isdigit() else 0
            chunks = []
            more = True
            while more and size <= limits.max_body:
                try:
                    message = await asyncio.wait_for(receive(), BODY_SECONDS)
                except asyncio.TimeoutError:
                    return await _error(408, f"the request body did not arrive within {BODY_SECONDS:g} s; send it "
                                             "at once")(scope, receive, send)  # fmt: skip
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
                size = max(size, sum(map(len, chunks)))
            if size > limits.max_body:
                message = f"the request body is over {limits.max_body} bytes, the server's limit (serve.py --max-body)"
                return await _error(413, message + "; send a shorter text")(scope, receive, send)
            body = b"".join(chunks)
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            self.active -= 1


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0]
    loc = first.get("loc", ())[1:]  # ("body", field, [the union's type,] [index])
    where = "".join(f"[{part}]" if isinstance(part, int) else "" for part in loc[1:])
    where = f"{loc[0]}{where}" if loc else ""
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON; send a JSON object with Content-Type: application/json"
    if not where:
        return "the body must be a JSON object with Content-Type: application/json"
    if first.get("type") == "extra_forbidden":
        return f"unknown field {where!r}; see GET /info for the fields"
    return f"{where}: {first.get('msg', 'invalid')}"


def app(model: api.Model, limits: Limits = Limits()):
    """The ASGI application serving ``model``: FastAPI's routes inside the Limiter."""
    workers = Workers(model, limits.threads)
    sessions = Sessions(workers, limits.max_sessions, limits.session_ttl)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        workers.close()

    api_app = FastAPI(title="charrnn", docs_url=None, redoc_url=None, lifespan=lifespan)  # docs: scripts from a CDN

    @api_app.exception_handler(Refused)
    async def refused(request, e: Refused):
        return _error(e.status, str(e))

    @api_app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        return _error(400, _validation_message(e))

    @api_app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        detail = e.detail if isinstance(e.detail, str) else "bad request"
        if e.status_code == 400:
            detail = "the body could not be read as JSON; send a UTF-8 JSON object"
        return _error(e.status_code, f"{detail}: {request.method} {request.url.path}" if e.status_code in (404, 405)
                      else detail)  # fmt: skip

    @api_app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    @api_app.get("/health")
    async def health():
        return {"status": "ok", "sessions": len(sessions), "requests": limiter.active}

    @api_app.get("/info")
    async def info():
        return {
            "checkpoint": model.path, "vocab": model.vocab, "arch": dataclasses.asdict(model.arch),
            "step": model.step, "val_loss": model.val_loss, "limits": dataclasses.asdict(limits),
            "fields": {name: sorted(body.model_fields) for name, body in
                       (("generate", GenerateRequest), ("score", ScoreRequest), ("sessions", SessionRequest))},
        }  # fmt: skip

    @api_app.post("/sessions")
    async def create_session(body: SessionRequest | None = None):
        seed = _seed(body.seed if body else None)
        return {"session": sessions.create(seed), "seed": seed, "expires_after": limits.session_ttl}

    @api_app.delete("/sessions/{name}")
    async def delete_session(name: str):
        sessions.delete(name)
        return {"deleted": name}

    @api_app.post("/score")
    async def score(body: ScoreRequest):
        _check_text(body.text, "text", limits)
        try:
            s = await workers.run(model.score, body.text)
        except UsageError as e:
            raise _usage(e) from None
        result = {"chars": s.chars, "nats": s.nats, "bits": s.bits, "perplexity": s.perplexity, "unknown": s.unknown,
                  "unknown_chars": sorted(s.unknown_chars)}  # fmt: skip
        if body.log_probs:
            result["log_probs"] = [None if math.isnan(p) else p for p in s.log_probs.tolist()]
        return result

    @api_app.post("/generate")
    async def generate(body: GenerateRequest):
        job = _generation(body, model, limits, sessions, workers)
        try:
            job.state = job.fed = await _feed(workers, job)
        except BaseException:
            _end(sessions, job, None)
            raise
        if body.stream:
            return StreamingResponse(_events(workers, sessions, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip
        try:
            text = "".join([piece async for piece in _draw(workers, job)])
        except BaseException:
            _end(sessions, job, None)
            raise
        _end(sessions, job, job.state)
        return {"text": text, **_summary(job)}

    limiter = Limiter(api_app, limits)
    return limiter


def _seed(seed) -> int:
    if seed is not None and seed < 0:
        raise Refused(400, f"seed must be 0 or more, got {seed}")
    return secrets.randbits(63) if seed is None else seed


def _check_text(text: str, field: str, limits: Limits) -> None:
    if len(text) > limits.max_text:
        raise Refused(413, f"{field} has {len(text)} characters, over the server's limit of {limits.max_text} "
                           "(serve.py --max-text); send a shorter one")  # fmt: skip
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        where = f"a lone surrogate {text[e.start]!r} at {e.start}"
        raise Refused(400, f"{field} holds {where}; send valid Unicode") from None


def _generation(body: GenerateRequest, model: api.Model, limits: Limits, sessions: Sessions,
                workers: Workers) -> _Generation:  # fmt: skip
    """``body`` checked (a Refused if it is bad), its session taken."""
    _check_text(body.prime, "prime", limits)
    stops = body.stop
    if len(stops) > MAX_STOPS:
        raise Refused(400, f"stop has {len(stops)} strings; at most {MAX_STOPS} are checked")
    for s in stops:
        _check_text(s, "stop", limits)
    if body.length > limits.max_length:
        raise Refused(413, f"length {body.length} is over the server's limit of {limits.max_length} characters a "
                           "request (serve.py --max-length); ask for fewer, or continue in a session")  # fmt: skip
    try:
        api.check_sampling(body.length, body.temperature, body.top_k, body.seed)
        encode_prime(model.vocab, body.prime, "prime")
        workers.checker.stream(0, body.temperature, body.top_k, stops)
    except UsageError as e:
        raise _usage(e) from None
    if body.session is None:
        seed = _seed(body.seed)
        return _Generation(body.prime, body.length, body.temperature, body.top_k, stops, workers.fresh(seed), seed,
                           None, None, body.append)  # fmt: skip
    if body.seed is not None:
        raise Refused(400, "seed belongs to the session: give it when creating the session (POST /sessions), "
                           "not with each request")  # fmt: skip
    entry = sessions.take(body.session)
    return _Generation(body.prime, body.length, body.temperature, body.top_k, stops, entry.state, entry.seed,
                       body.session, entry, body.append)  # fmt: skip


async def _feed(workers: Workers, job: _Generation) -> api.SessionState:
    """The state after the prime, fed FEED_SLICE characters a turn."""
    state = job.state
    for start in range(0, len(job.prime), FEED_SLICE):
        _, state = await workers.step(state, lambda s, part=job.prime[start : start + FEED_SLICE]: s.feed(part))
    return state


async def _draw(workers: Workers, job: _Generation):
    """The text of each slice of up to SLICE new characters; ``job.state`` and ``job.stopped`` follow each slice."""
    done = 0
    while done < job.length:
        n = min(SLICE, job.length - done)
        piece, job.state = await workers.step(job.state, lambda s, n=n: s.sample(n, job.temperature, job.top_k,
                                                                                    job.stops))  # fmt: skip
        done += len(piece)
        # A stop string ends the text: before the slice's end, or exactly at it.
        job.stopped = len(piece) < n or any(job.state.context.endswith(s) for s in job.stops)
        yield piece
        if job.stopped:
            return


def _end(sessions: Sessions, job: _Generation, state: api.SessionState | None) -> None:
    """Give a session back, after the prime alone unless ``append`` (``state`` None: as it was)."""
    if job.entry is not None:
        sessions.give_back(job.session, job.entry, state if job.append or state is None else job.fed)


def _summary(job: _Generation) -> dict:
    return {"stopped": job.stopped, "seed": job.seed, "session": job.session}


async def _events(workers: Workers, sessions: Sessions, job: _Generation):
    """Server-sent events: ``data: {"text": ...}`` per slice, then ``event: done`` with the summary.
    A session's state is committed after each event is sent, so a client that leaves keeps what it received."""
    state = job.state
    try:
        async for piece in _draw(workers, job):
            yield f"data: {json.dumps({'text': piece}, ensure_ascii=False)}\n\n".encode()
            state = job.state
        yield f"event: done\ndata: {json.dumps(_summary(job))}\n\n".encode()
    finally:
        _end(sessions, job, state)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>charrnn</title>
<style>
body { font: 15px system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; }
textarea, pre { font: 14px ui-monospace, monospace; width: 100%; box-sizing: border-box; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: 1em; min-height: 10em; }
label { margin-right: 1em; } input { width: 6em; } #status { color: #a00; }
</style></head><body>
<h1>charrnn</h1><p id="model"></p>
<form id="form">
<p><textarea id="prime" rows="4" placeholder="a prime: text to continue"></textarea></p>
<p><label>temperature <input id="temperature" type="number" value="0.8" min="0" step="0.1"></label>
<label>length <input id="length" type="number" value="500" min="0" step="100"></label>
<button id="generate" type="submit">generate</button></p>
</form>
<pre id="output"></pre><p id="status"></p>
<script>
const $ = id => document.getElementById(id);
fetch("info").then(r => r.json()).then(m => {
  const loss = m.val_loss === null ? "none" : m.val_loss.toFixed(4);
  const arch = `${m.arch.cell} ${m.arch.num_layers} x ${m.arch.hidden_size}`;
  $("model").textContent = `${arch}, ${m.vocab.length} characters, step ${m.step ?? "?"}, validation loss ${loss}`;
});
$("form").addEventListener("submit", async event => {
  event.preventDefault();
  const output = $("output"), status = $("status"), button = $("generate");
  const prime = $("prime").value;
  output.textContent = prime;
  status.textContent = "";
  button.disabled = true;
  try {
    const response = await fetch("generate", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({prime, length: Number($("length").value), temperature: Number($("temperature").value),
                            stream: true})});
    if (!response.ok) { status.textContent = (await response.json()).error; return; }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {  // one server-sent event
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = JSON.parse(event.slice(event.indexOf("data: ") + 6));
        if (event.startsWith("data: ")) output.textContent += data.text;
      }
    }
  } catch (error) {
    status.textContent = String(error);
  } finally {
    button.disabled = false;
  }
});
</script></body></html>
"""
