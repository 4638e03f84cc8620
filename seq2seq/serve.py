"""An HTTP translation server speaking TensorFlow Serving's REST dialect, with a web page.

    seq2seq serve --export EXPORT_DIR | --model DIR [--host 127.0.0.1] [--port 8501] [--name translate]
                  [--beam-size N] [--max-sentences N] [--max-chars N] [--max-batch-size N]
                  [--batch-timeout-ms MS] [--max-queue N]

(also ``python -m seq2seq.serve``). ``--export`` serves the newest version folder of an exported
SavedModel (the artifact TensorFlow Serving loads) and all of its signatures; ``--model`` serves
a trained model directory's ``serving_default`` (``text`` -> ``translation``, ``score``), which
can also give the n-best list and the attention of each translation.

    POST /v1/models/NAME[/versions/V]:predict   {"instances": [...]} or {"inputs": {"text": [...]}}
    GET  /v1/models/NAME[/versions/V]           the version's status
    GET  /v1/models/NAME[/versions/V]/metadata  the signatures
    GET  /healthz                               {"status": "ok", ...}
    GET  /                                      the page: translate, n-best, attention heatmap

Errors are ``{"error": "..."}``: 400 for a malformed body, a missing field or a value of the
wrong type, 404 for another model name or version, 413 for a body or a sentence over the limits,
503 when the queue is full. Sentences are batched across requests; one model is in memory,
searched by two worker threads, a batch each (``seq2seq/servable.py``). SIGTERM or Ctrl-C
finishes the requests in flight, then exits 0.
"""

import argparse
import asyncio
import html
import json
import os
import re
import signal
import socket
import sys
import time

from seq2seq.cli import require
from seq2seq.errors import UserError, run_cli
from seq2seq.model_dir import read_model_config
from seq2seq.runtime import import_tensorflow, share_cores
from seq2seq.servable import DEFAULT_SIGNATURE

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MODEL_PATH = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<verb>/metadata|:predict)?")
OPTIONS = ("n_best", "attention")  # request fields of this server's own, for the page
DRAIN_LIMIT = 64 << 20  # bytes of an oversized body read (and dropped) so that its client gets the 413


class RequestError(Exception):
    """A request the server refuses: the HTTP ``status`` and the ``{"error": message}`` body."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def check_value(value, dtype, where, max_chars):
    """The request's ``value`` for a tensor of ``dtype``, or RequestError (400 wrong type, 413 too long)."""
    if dtype == "DT_STRING":
        if not isinstance(value, str):
            raise RequestError(400, f"{where}: must be a string, got {type(value).__name__}")
        if len(value) > max_chars:
            raise RequestError(413, f"{where}: {len(value)} characters; the limit is {max_chars} (--max-chars)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800") written as a JSON escape: U+FFFD
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (isinstance(value, bool) if dtype == "DT_BOOL" else numeric):
        raise RequestError(400, f"{where}: must be a {'boolean' if dtype == 'DT_BOOL' else 'number'}, "
                                f"got {type(value).__name__}")
    return value


def parse_predict(body, backend, max_sentences, max_chars):
    """Checks a :predict body; returns ``(key, n_best, columns, size, rows)``: the batching key
    (signature, n-best list wanted, attention), the n-best list's length, input name -> list of
    ``size`` values, and whether the body was in row format ("instances") rather than columnar
    ("inputs")."""
    if not isinstance(body, dict):
        raise RequestError(400, 'the body must be a JSON object with "instances" or "inputs"')
    known = ("signature_name", "instances", "inputs", *OPTIONS)
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r} (the fields are {', '.join(known)})")
    signature = body.get("signature_name", DEFAULT_SIGNATURE)
    if signature not in backend.signatures:
        raise RequestError(400, f"no signature {signature!r}; this model has {', '.join(backend.signatures)}")
    inputs = backend.signatures[signature]["inputs"]
    names = sorted(inputs)
    if ("instances" in body) == ("inputs" in body):
        raise RequestError(400, 'the body must have "instances" (rows) or "inputs" (columns), '
                                f"{'not both' if 'inputs' in body else 'and has neither'}")
    rows = "instances" in body
    if rows:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise RequestError(400, '"instances" must be a list')
        if len(instances) > max_sentences:
            raise RequestError(413, f"{len(instances)} instances; the limit is {max_sentences} (--max-sentences)")
        columns = {name: [] for name in names}
        for i, instance in enumerate(instances):
            if len(names) == 1 and not isinstance(instance, dict):
                instance = {names[0]: instance}
            if not isinstance(instance, dict) or sorted(instance) != names:
                raise RequestError(400, f"instance {i}: must be an object with the inputs {', '.join(names)}")
            for name in names:
                columns[name].append(instance[name])
    else:
        columns = body["inputs"]
        if len(names) == 1 and isinstance(columns, list):
            columns = {names[0]: columns}
        if not isinstance(columns, dict) or sorted(columns) != names:
            raise RequestError(400, f'"inputs" must be an object with the inputs {", ".join(names)}')
        for name in names:
            if not isinstance(columns[name], list):
                raise RequestError(400, f'"inputs"."{name}" must be a list')
            if len(columns[name]) > max_sentences:
                raise RequestError(413, f'{len(columns[name])} values of "{name}"; the limit is {max_sentences} '
                                        "(--max-sentences)")
        if len({len(columns[name]) for name in names}) > 1:
            raise RequestError(400, f'the inputs {", ".join(names)} must have as many values each')
    for name in names:
        if len(inputs[name]["tensor_shape"]["dim"]) != 1:
            raise RequestError(400, f"signature {signature!r}: input {name!r} is not a batch of scalars, which "
                                    "this server does not serve")
        def where(i):
            if rows:
                return f"instance {i}" + (f": {name}" if len(names) > 1 else "")
            return f'"inputs"."{name}"[{i}]'

        columns[name] = [check_value(value, inputs[name]["dtype"], where(i), max_chars)
                         for i, value in enumerate(columns[name])]
    n_best, attention = body.get("n_best", 1), body.get("attention", False)
    if isinstance(n_best, bool) or not isinstance(n_best, int) or not 1 <= n_best <= backend.max_n_best:
        raise RequestError(400, f'"n_best" must be an integer from 1 to {backend.max_n_best}, got {n_best!r}'
                           + ("" if backend.max_n_best > 1 else " (n-best lists need a model directory: --model)"))
    if not isinstance(attention, bool) or (attention and not backend.attention):
        raise RequestError(400, '"attention" must be true or false' if not isinstance(attention, bool) else
                           '"attention" needs a model directory (--model), not a SavedModel')
    if (n_best > 1 or attention) and signature != DEFAULT_SIGNATURE:
        raise RequestError(400, f'"n_best" and "attention" are for {DEFAULT_SIGNATURE} only')
    return (signature, n_best > 1, attention), n_best, columns, len(columns[names[0]]), rows


def answer(rows, results, output_names):
    """The :predict answer: {"predictions": [...]} for rows, {"outputs": {...}} for columns; one
    output gives bare values, as TensorFlow Serving does."""
    names = list(output_names) + [key for key in (results[0] if results else {}) if key not in output_names]
    if rows:
        return {"predictions": [r[names[0]] for r in results] if len(names) == 1 else results}
    if len(names) == 1:
        return {"outputs": [r[names[0]] for r in results]}
    return {"outputs": {name: [r[name] for r in results] for name in names}}


def json_response(data, status=200):
    from starlette.responses import Response

    # NaN and infinities allowed, as in TensorFlow Serving's JSON.
    return Response(json.dumps(data, ensure_ascii=False, separators=(",", ":")), status, media_type="application/json")


async def read_body(request, limit):
    """The request's body; RequestError 413 (after reading and dropping up to DRAIN_LIMIT bytes,
    so that the client, still sending, reads the answer) when it is over ``limit`` bytes."""
    from starlette.requests import ClientDisconnect

    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > DRAIN_LIMIT:
                break
    except ClientDisconnect:
        raise RequestError(400, "the client went away before the end of its body") from None
    if size > limit:
        raise RequestError(413, f"request body over {limit} bytes (--max-sentences × --max-chars)")
    return b"".join(chunks)


def build_app(backend, batcher, args, body_limit):
    """The Starlette application: the REST API, /healthz and the page."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    name, version = args.name, backend.version
    limits = {"max_sentences": args.max_sentences, "max_chars": args.max_chars, "max_n_best": backend.max_n_best,
              "attention": backend.attention, "source": backend.source}
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        page = f.read().replace("{{MODEL}}", html.escape(name))

    async def models(request):
        match = MODEL_PATH.fullmatch(request.path_params["path"])
        if not match or match["name"] != name or match["version"] not in (None, version):
            wanted = request.path_params["path"].split(":")[0].split("/")[0]
            spec = f"Specific({wanted}, {match['version']})" if match and match["version"] else f"Latest({wanted})"
            raise RequestError(404, f"Servable not found for request: {spec}")
        verb = match["verb"]
        if (request.method == "POST") != (verb == ":predict"):
            raise RequestError(405, f"{request.method} is not allowed here (POST for :predict, GET otherwise)")
        if verb == "/metadata":
            return json_response({"model_spec": {"name": name, "signature_name": "", "version": version},
                                  "metadata": {"signature_def": {"signature_def": backend.signatures},
                                               "seq2seq": limits}})
        if verb is None:
            return json_response({"model_version_status": [{"version": version, "state": "AVAILABLE", "status": {
                "error_code": "OK", "error_message": ""}}]})
        body = await read_body(request, body_limit)
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            raise RequestError(400, f"the body is not valid UTF-8 JSON: {str(error)[:200]}") from None
        key, n_best, columns, size, rows = parse_predict(body, backend, args.max_sentences, args.max_chars)
        request.state.sentences = size
        from seq2seq.servable import QueueFull

        try:
            future = batcher.submit(key, columns, size)
        except QueueFull as error:
            raise RequestError(503, str(error)) from None
        results = await asyncio.wrap_future(future)
        if n_best > 1:
            results = [{**result, "n_best": result["n_best"][:n_best]} for result in results]
        return json_response(answer(rows, results, backend.signatures[key[0]]["outputs"]))

    async def healthz(request):
        return json_response({"status": "ok", "model": name, "version": version, "queued": batcher.pending,
                              "batches": batcher.batches, "sentences": batcher.sentences})

    async def index(request):
        return HTMLResponse(page)

    async def refused(request, error):
        return json_response({"error": str(error)}, error.status)

    async def http_error(request, error):
        return json_response({"error": error.detail}, error.status_code)

    async def failed(request, error):  # a bug or a TensorFlow failure: the server goes on
        return json_response({"error": f"{type(error).__name__}: {str(error)[:500]}"}, 500)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.close()  # after uvicorn has let the requests in flight finish

    routes = [Route("/", index), Route("/healthz", healthz),
              Route("/v1/models/{path:path}", models, methods=["GET", "POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    handlers = {RequestError: refused, HTTPException: http_error, Exception: failed}
    return LogRequests(Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan))


class LogRequests:
    """ASGI middleware: one stderr line per request, method, path, status, sentences, milliseconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        scope.setdefault("state", {})

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"].isprintable() else repr(scope["path"])  # one line, whatever it holds
            print(f"{scope['method']} {path} {status[0]} {scope['state'].get('sentences', 0)} sentences "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms", file=sys.stderr, flush=True)


def newest_version(export_dir):
    """``(path, version)`` of the newest numeric version folder of ``export_dir`` holding a
    ``saved_model.pb``, as TensorFlow Serving picks it (or ``export_dir`` itself if it is one)."""
    if not os.path.isdir(export_dir):
        raise UserError(f"{export_dir}: export directory not found (write one with python -m seq2seq.export)")
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        base = os.path.basename(os.path.normpath(export_dir))
        return export_dir, base if base.isdigit() else "1"
    versions = [int(v) for v in os.listdir(export_dir)
                if v.isdigit() and os.path.isfile(os.path.join(export_dir, v, "saved_model.pb"))]
    if not versions:
        raise UserError(f"{export_dir}: no version folder (1/, 2/, ...) with a saved_model.pb "
                        "(write one with python -m seq2seq.export)")
    return os.path.join(export_dir, str(max(versions))), str(max(versions))


def bind(host, port):
    """A socket bound to ``host:port`` (0: any port), not listening until the model is loaded; or UserError."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        return sock
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None


def parse_args(argv, prog):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", metavar="EXPORT_DIR", help="serve the newest version of this exported SavedModel")
    source.add_argument("--model", metavar="DIR", help="serve this trained model directory (n-best, attention)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8501, help="port (default 8501, as TensorFlow Serving; 0: any)")
    parser.add_argument("--name", default="translate", help="the model name in the URLs (default translate)")
    parser.add_argument("--beam-size", type=int, help="with --model: beam size (default: the config's)")
    parser.add_argument("--max-sentences", type=int, default=256, help="sentences a request (default 256)")
    parser.add_argument("--max-chars", type=int, default=2000, help="characters a sentence (default 2000)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="sentences a search call (default 64)")
    parser.add_argument("--batch-timeout-ms", type=float, default=10.0,
                        help="longest wait for a batch to fill, from its oldest sentence's arrival (default 10)")
    parser.add_argument("--max-queue", type=int, default=1024,
                        help="sentences waiting or being translated, beyond which requests get 503 (default 1024)")
    return parser.parse_args(argv)


def main(argv=None, prog="python -m seq2seq.serve"):
    args = parse_args(argv, prog)
    require(args, positive=("beam_size", "max_sentences", "max_chars", "max_batch_size", "max_queue"),
            non_negative=("port", "batch_timeout_ms"))
    if not re.fullmatch(r"[^/:\s]+", args.name):
        raise UserError(f"--name must be a name without '/', ':' or spaces (it goes into the URLs), got {args.name!r}")
    if args.port > 65535:
        raise UserError(f"--port must be at most 65535, got {args.port}")
    if args.max_queue < args.max_sentences:
        raise UserError(f"--max-queue ({args.max_queue}) must be at least --max-sentences ({args.max_sentences})")
    if args.export and args.beam_size:
        raise UserError("--beam-size is for --model; a SavedModel's beam size is set at export "
                        "(python -m seq2seq.export --beam-size)")
    path, version = newest_version(args.export) if args.export else (args.model, None)
    if args.model:
        read_model_config(args.model)  # fails fast, before TensorFlow loads
    sock = bind(args.host, args.port)
    try:
        return serve(args, sock, path, version)
    finally:
        sock.close()


def serve(args, sock, path, version):
    """Loads the model, then serves on ``sock`` until SIGTERM or Ctrl-C; returns 0."""
    import_tensorflow()
    import uvicorn

    from seq2seq.servable import Batcher, ModelDirBackend, SavedModelBackend
    from seq2seq.translate import PARALLEL_BATCHES  # batches searched at once, by as many workers
    share_cores(PARALLEL_BATCHES)

    backend = SavedModelBackend(path, version) if args.export else ModelDirBackend(path, args.beam_size)
    sock.listen(2048)
    body_limit = 4096 + args.max_sentences * (12 * args.max_chars + 64)  # every character escaped as \uXXXX\uXXXX
    batcher = Batcher(backend.run, lambda key, columns, i: len(str(next(iter(columns.values()))[i])),
                      args.max_batch_size, args.batch_timeout_ms / 1000.0, args.max_queue, PARALLEL_BATCHES)
    app = build_app(backend, batcher, args, body_limit)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"serving {backend.source} as model {args.name!r} (version {version or backend.version}; signatures "
          f"{', '.join(backend.signatures)})", file=sys.stderr)
    print(f"limits: {args.max_sentences} sentences a request (--max-sentences), {args.max_chars} characters a "
          f"sentence (--max-chars), bodies up to {body_limit} bytes; batches of up to {args.max_batch_size} "
          f"sentences (--max-batch-size) waiting at most {args.batch_timeout_ms:g} ms (--batch-timeout-ms); "
          f"{args.max_queue} sentences queued (--max-queue)", file=sys.stderr)
    print(f"listening on http://{url_host}:{port}/ (the page; the API under /v1/models/{args.name})",
          file=sys.stderr, flush=True)
    stops = []
    for number in (signal.SIGINT, signal.SIGTERM):  # ignored outside uvicorn's handling: neither its raising
        signal.signal(number, signal.SIG_IGN)  # the signal again nor one more while Python exits may kill
    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM or Ctrl-C: no waiting for fuller batches from now on
            stops.append(sig)
            batcher.drain()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    server.run(sockets=[sock])
    print(f"stopped{' by ' + signal.Signals(stops[0]).name if stops else ''}: {batcher.sentences} sentences "
          f"translated in {batcher.batches} batches", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
