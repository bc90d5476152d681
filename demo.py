"""A local demo page: record or upload speech, see its emotion, how it moves, and where the model listened.

    python demo.py [--model saved_model/<run>] [--host 127.0.0.1] [--port 7860]

Serves the page in ``demo_page/`` and a small HTTP API (Starlette on uvicorn) for one run,
loaded once and shared by every request:

    GET  /api/run                     the run: its recipe, test scores, labels, limits
    POST /api/predict?filename=NAME   body: the file's bytes (any format infer.py reads)
                                      -> emotion, probabilities, windows, waveform, attention

``curl --data-binary @speech.wav 'http://127.0.0.1:7860/api/predict?filename=speech.wav'``
asks it from a terminal. The page records in the browser (Web Audio, sent as 16-bit WAV)
and draws with plain SVG: every script and style is served from here, so it works offline.
Bad input gets a status and one line (`DemoError`); one recording is analysed at a time
and a second request meanwhile is told to wait (503), never queued.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import cli
import files
import inference
import runs
import utils
from cli import positive_float, positive_int
from runs import Run, load_newest_run, load_run

logger = logging.getLogger("demo")

PAGE = files.PROJECT_ROOT / "demo_page"  # index.html and what it loads
ENVELOPE_POINTS = 600  # waveform columns the page draws
ATTENTION_HEAD = "blstm-attention"  # the head whose segment weights are learned (the statistics head weighs segments equally)


class DemoError(Exception):
    """A request the demo cannot answer: ``status`` is its HTTP status, the message one line for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ServeError(Exception):
    """The demo cannot start serving: the address is taken or not this machine's."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one request may send (``max_bytes`` of file, ``max_seconds`` of audio) and the timeline's ``window`` in seconds (as infer.py's)."""

    max_bytes: int = 20 * 2**20
    max_seconds: float = 600.0
    window: float = utils.WINDOW_SECONDS


def run_summary(run: Run, settings: Settings) -> dict:
    """What the page says about the run answering: name, recipe, test scores, labels, limits.

    The recipe comes from the run's ``options.json`` and the scores from ``metrics.json``
    (either may be missing in a run copied without them: then None).
    """
    options = _optional_json(run.folder / runs.OPTIONS)
    metrics = _optional_json(run.folder / runs.METRICS)
    recipe_keys = ("backbone", "weights", "image_size", "stages", "backbone_mode", "head", "speaker_norm", "epochs", "corpus")
    return {
        "name": run.folder.name,
        "labels": run.labels,
        "recipe": {key: options[key] for key in recipe_keys if key in options} or None,
        "test_speakers": options.get("test_speakers"),
        "test_uar": metrics.get("uar"),
        "test_wa": metrics.get("wa"),
        "attention": has_attention(run),
        "segment_seconds": run.features.segment_frames * run.features.hop_length / run.features.sr,
        "window_seconds": settings.window,
        "max_bytes": settings.max_bytes,
        "max_seconds": settings.max_seconds,
    }


def has_attention(run: Run) -> bool:
    """Whether the run's head weighs its segments by learned attention (the statistics head weighs them equally)."""
    return run.model.head.config.kind == ATTENTION_HEAD


def _optional_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def envelope(y: np.ndarray, points: int = ENVELOPE_POINTS) -> np.ndarray:
    """The waveform's peak in each of ``points`` equal spans: what a page can draw of it.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
    points : int > 0

    Returns
    -------
    peaks : np.ndarray [shape=(min(points, n),), dtype=float32]
        The largest absolute sample of each span, full scale 1.
    """
    edges = np.linspace(0, len(y), min(points, len(y)) + 1).astype(int)
    return np.maximum.reduceat(np.abs(y), edges[:-1]).astype(np.float32)


def attention_spans(windows: Sequence[inference.WindowPrediction], features: utils.FeatureConfig) -> list[dict]:
    """Each segment's attention weight, with where it lies in the recording.

    Parameters
    ----------
    windows : sequence of inference.WindowPrediction
        The windows ``inference.predict(..., attention=True)`` cut the recording into, with their weights.
    features : utils.FeatureConfig
        The run's: the rate the windows were read at, and where their segments lie.

    Returns
    -------
    spans : list of dict
        ``"window"`` (an index into ``windows``), ``"start"`` and ``"end"`` in seconds and
        ``"weight"``: the segment's share of its window's attention (a window's weights
        sum to 1), the embeddings standardised with the training
        speakers' statistics as ``inference.predict`` does by default.
    """
    spans = []
    for index, window in enumerate(windows):
        samples = int(round(window.end * features.sr)) - int(round(window.start * features.sr))
        times = utils.segment_spans(samples, features) + window.start
        spans += [{"window": index, "start": float(start), "end": float(end), "weight": float(weight)}
                  for (start, end), weight in zip(times, window.attention)]
    return spans


def analyse(path: Path, name: str, run: Run, settings: Settings) -> dict:
    """The page's answer for one recording: `inference.predict` on it, with what the page draws.

    Parameters
    ----------
    path : Path
        The recording, as uploaded.
    name : str
        What messages call it (the uploaded file's name).
    run : runs.Run
    settings : Settings

    Returns
    -------
    result : dict
        ``emotion``, ``confidence``, ``probabilities`` (label -> probability),
        ``duration`` (s), ``windows`` (start, end, probabilities in label order),
        ``warnings``, ``envelope`` (peaks over the recording) and ``attention``
        (`attention_spans`, or None for a head without attention).

    Raises
    ------
    DemoError
        415 for a file that is not audio, 413 for one over ``settings.max_seconds``,
        422 for a silent recording or one the model gives no probabilities for.
    """

    def named(message: str) -> str:
        return message.replace(str(path), name)

    try:
        info = utils.audio_info(path)
    except utils.AudioError as error:
        raise DemoError(415, named(str(error))) from None
    if info.duration > settings.max_seconds:
        raise DemoError(413, f"{name}: {info.duration:.0f} s of audio, over the demo's limit of {settings.max_seconds:g} s (python demo.py --max-seconds)")
    attention = has_attention(run)
    (prediction,) = inference.predict([path], run, window=settings.window, progress=False, attention=attention)
    if prediction.error is not None:  # audio whose header reads but whose samples do not, or a model giving NaN
        raise DemoError(422, named(prediction.error))
    if inference.SILENT in prediction.warnings:
        raise DemoError(422, f"{name}: silent (no sound above -80 dBFS); check the microphone or the file")
    y = utils.load_wav(path, sr=run.features.sr)
    return {
        "name": name,
        "emotion": prediction.emotion,
        "confidence": prediction.confidence,
        "probabilities": prediction.probabilities,
        "duration": prediction.duration,
        "windows": [{"start": w.start, "end": w.end, "probabilities": w.probabilities.tolist()} for w in prediction.windows],
        "warnings": list(prediction.warnings),
        "envelope": envelope(y).tolist(),
        "attention": attention_spans(prediction.windows, run.features) if attention else None,
    }


def create_app(run: Run, settings: Settings = Settings()):
    """The demo as an ASGI application (Starlette): the page, ``/api/run`` and ``/api/predict``.

    ``run`` is shared by every request; a request that arrives while another is analysed
    gets 503 (the model computes one recording at a time, and a queue would hide the wait).
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    busy = threading.Lock()
    summary = run_summary(run, settings)

    def failure(error: DemoError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    async def page(request: Request) -> FileResponse:
        return FileResponse(PAGE / "index.html")

    async def describe(request: Request) -> JSONResponse:
        return JSONResponse(summary)

    async def body_of(request: Request, name: str) -> bytes:
        declared = request.headers.get("content-length")
        too_large = DemoError(413, f"{name}: over the demo's upload limit of {settings.max_bytes / 2**20:g} MiB (python demo.py --max-upload-mb)")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_bytes:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_bytes:
                raise too_large
        if not body:
            raise DemoError(400, f"{name}: empty (no bytes were sent); choose a file or record for a moment")
        return bytes(body)

    async def predict(request: Request) -> JSONResponse:
        name = Path(request.query_params.get("filename") or "upload").name or "upload"
        if not busy.acquire(blocking=False):
            return failure(DemoError(503, "busy: another recording is being analysed; try again when it is done"))
        try:
            body = await body_of(request, name)
            with tempfile.TemporaryDirectory(prefix="demo-") as folder:
                path = Path(folder) / name
                path.write_bytes(body)
                result = await run_in_threadpool(analyse, path, name, run, settings)
            return JSONResponse(result)
        except DemoError as error:
            return failure(error)
        except Exception as error:  # a fault of the model or the libraries: one line on the page, the details in the log
            logger.exception("analysing %s failed", name)
            return failure(DemoError(500, f"{name}: the analysis failed ({runs.first_line(error)})"))
        finally:
            busy.release()

    return Starlette(routes=[
        Route("/", page),
        Route("/api/run", describe),
        Route("/api/predict", predict, methods=["POST"]),
        Mount("/static", StaticFiles(directory=PAGE)),
    ])


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, bound before the server starts so that a taken port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections wait in the backlog from now on, while the model loads
    except OSError as error:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({error.strerror or error}); pass another --port or --host") from None
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demo.py",
        description="Serve a local page to record or upload speech and see its emotion, its timeline and the attention, from a trained run.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("--model", default=None, help=f"run folder of train.py (default: the newest usable run in {runs.MODEL_ROOT}/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on: this machine only by default; 0.0.0.0 shares the page with the network (browsers record only over https or from localhost)")
    parser.add_argument("--port", type=positive_int, default=7860, help="TCP port to listen on")
    parser.add_argument("--max-upload-mb", type=positive_float, default=Settings.max_bytes / 2**20, help="largest file a request may send, in MiB")
    parser.add_argument("--max-seconds", type=positive_float, default=Settings.max_seconds, help="longest recording analysed, in seconds")
    parser.add_argument("--window", type=positive_float, default=Settings.window, help="seconds per window of the timeline: recordings are cut into equal windows of about this length and their emotion is the windows' duration-weighted mean, as infer.py --window")
    parser.add_argument("--verbose", action="store_true", help="log every request and the libraries' start-up notes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.log_to_stderr(logging.INFO, "%(message)s")
    settings = Settings(max_bytes=int(args.max_upload_mb * 2**20), max_seconds=args.max_seconds, window=args.window)

    def work() -> int:
        import uvicorn

        sock = bound_socket(args.host, args.port)
        run = load_run(args.model) if args.model is not None else load_newest_run()
        app = create_app(run, settings)
        address = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
        reach = "this machine only" if is_loopback(args.host) else "reachable from the network; browsers record only over https or from localhost"
        logger.info("demo: run %s at %s (%s); Ctrl-C stops it", run.folder.name, address, reach)
        config = uvicorn.Config(app, log_level="info" if args.verbose else "warning", access_log=args.verbose)
        uvicorn.Server(config).run(sockets=[sock])
        return 0

    return cli.run_command(work, failures=(runs.RunError, ServeError), interrupted="")


if __name__ == "__main__":
    cli.filter_library_noise(verbose="--verbose" in sys.argv[1:])
    sys.exit(main())
