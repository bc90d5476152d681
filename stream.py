"""Emotions of a live stream, one prediction per hop: raw PCM from standard input, or the microphone.

    python infer.py --stream -            # 16-bit little-endian mono PCM at --stream-rate on stdin
    python infer.py --stream              # the default microphone (the optional sounddevice package)

Every `HOP_SECONDS` the last `WINDOW_SECONDS` of audio are cut into segments exactly as for a
file (`utils.get_framed_log_melspectrogram`), embedded and classified (`runs.Run`'s forward API).
For a run trained with speaker normalisation the embeddings are standardised with a running
estimate of the stream's own statistics (`SpeechModel.RunningStatistics`, the stream taken as one
speaker), the training speakers' until `RUNNING_MIN_SEGMENTS` segments were seen; a prosodic
branch's vectors alike, one per hop, after `RUNNING_MIN_VECTORS` hops. A hop whose
audio never reaches `utils.SILENCE_PEAK` is reported as silence, not as an emotion, and leaves the
statistics alone. Audio at another rate is resampled as it comes (soxr's streaming resampler).
"""

from __future__ import annotations

import dataclasses
import queue
import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np

import utils
from errors import UsageError
from runs import Run

HOP_SECONDS = 1.0  # a prediction every hop
WINDOW_SECONDS = 3.0  # the audio each prediction sees: the last seconds of the stream
RUNNING_MIN_SEGMENTS = 20  # segments seen before the stream's own statistics replace the training speakers'
# Prosodic vectors (one per hop, of overlapping windows) seen before the stream's own statistics replace the training speakers'.
RUNNING_MIN_VECTORS = 10
SAMPLE_BYTES = 2  # 16-bit PCM


class StreamError(UsageError):
    """A stream that cannot be opened: no microphone package, no input device; one line, exit 2."""


@dataclasses.dataclass(frozen=True)
class StreamPrediction:
    """What the stream says at ``time`` (seconds since it began, the end of the audio seen).

    ``emotion`` and ``probabilities`` are None for silence.
    """

    time: float
    emotion: str | None
    probability: float
    probabilities: dict[str, float] | None


def pcm_chunks(source: BinaryIO, rate: int, seconds: float = HOP_SECONDS) -> Iterator[np.ndarray]:
    """Float32 mono chunks of ``seconds`` from 16-bit little-endian mono PCM bytes; the last one may be shorter.

    Parameters
    ----------
    source : binary file object
        Standard input's buffer, a pipe, a file.
    rate : int > 0, in Hz
        The PCM's sample rate.
    """
    size = max(1, int(round(seconds * rate))) * SAMPLE_BYTES
    pending = b""
    while True:
        data = source.read(size - len(pending))
        if not data:
            break
        pending += data
        if len(pending) >= size:
            yield np.frombuffer(pending, dtype="<i2").astype(np.float32) / 32768.0
            pending = b""
    whole = len(pending) - len(pending) % SAMPLE_BYTES  # an odd trailing byte is not a sample
    if whole:
        yield np.frombuffer(pending[:whole], dtype="<i2").astype(np.float32) / 32768.0


def microphone_chunks(rate: int, seconds: float = HOP_SECONDS) -> Iterator[np.ndarray]:
    """Float32 mono chunks of ``seconds`` from the default input device, until Ctrl-C.

    Raises
    ------
    StreamError
        If the sounddevice package is missing or no input device can be opened.
    """
    try:
        import sounddevice
    except (ImportError, OSError) as error:  # OSError: the package is there, PortAudio is not
        raise StreamError(
            f"--stream without a source reads the microphone, which needs sounddevice ({error}): pip install sounddevice, "
            "or pipe PCM to --stream - (ffmpeg -i in.mp3 -f s16le -ac 1 -ar 16000 - | python infer.py --stream -)"
        ) from None
    blocks: queue.Queue[np.ndarray] = queue.Queue()
    frames = max(1, int(round(seconds * rate)))
    try:
        stream = sounddevice.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=frames,
                                         callback=lambda data, *_: blocks.put(data[:, 0].copy()))
    except Exception as error:  # PortAudio's errors: no device, a rate it refuses
        raise StreamError(f"--stream: no microphone could be opened ({error}); pipe PCM to --stream - instead") from None
    with stream:
        while True:
            yield blocks.get()


def predict_stream(
    chunks: Iterable[np.ndarray],
    run: Run,
    rate: int,
    *,
    speaker_norm: str = "running",
    window: float = WINDOW_SECONDS,
) -> Iterator[StreamPrediction]:
    """One prediction per chunk (a hop) of the last ``window`` seconds of the stream.

    Parameters
    ----------
    chunks : iterable of np.ndarray [shape=(n,), dtype=float32]
        The stream's audio in order, at ``rate``; each chunk is one hop.
    run : runs.Run
    rate : int > 0, in Hz
        The chunks' sample rate; resampled to the run's as they come.
    speaker_norm : "running" or "none"
        Standardise with the stream's running statistics (for runs trained with speaker
        normalisation), or with the training speakers'.
    window : float > 0, in seconds
    """
    import soxr

    from SpeechModel import RunningStatistics

    if speaker_norm not in ("running", "none"):
        raise ValueError(f"speaker_norm must be 'running' or 'none', got {speaker_norm!r}")
    sr = run.features.sr
    resampler = None if rate == sr else soxr.ResampleStream(rate, sr, 1, dtype="float32")
    keep = int(round(window * sr))
    buffer = np.zeros(0, dtype=np.float32)
    statistics, prosodic = RunningStatistics(), RunningStatistics()
    received = 0
    for chunk in chunks:
        received += len(chunk)
        chunk = np.asarray(chunk, dtype=np.float32) if resampler is None else resampler.resample_chunk(np.asarray(chunk, np.float32))
        buffer = np.concatenate([buffer, chunk])[-keep:]
        now = received / rate
        if buffer.size == 0 or np.max(np.abs(chunk), initial=0.0) < utils.SILENCE_PEAK:
            yield StreamPrediction(now, None, 0.0, None)
            continue
        segments = utils.get_framed_log_melspectrogram(buffer, run.features)[np.newaxis]
        vector = run.prosody_of(buffer)
        prosody = None if vector is None else vector[np.newaxis]
        if speaker_norm == "none":
            probabilities = run.forward(segments, prosody)[0]  # the training speakers' statistics, as infer.predict and the exports
        else:
            embeddings = run.embed(segments)
            statistics.update(embeddings[0])
            own = statistics.count >= RUNNING_MIN_SEGMENTS
            if vector is not None:
                prosodic.update(vector)
            own_prosody = prosodic.count >= RUNNING_MIN_VECTORS
            probabilities = run.classify(
                embeddings, *((statistics.mean, statistics.std) if own else (None, None)),
                prosody, *((prosodic.mean, prosodic.std) if own_prosody else (None, None)),
            )[0]
        best = int(np.argmax(probabilities))
        yield StreamPrediction(now, run.labels[best], float(probabilities[best]), dict(zip(run.labels, map(float, probabilities))))


def format_line(prediction: StreamPrediction, output_format: str) -> str:
    """One line: time, emotion, probability (``table``), or a JSON object (``jsonl``)."""
    import json

    if output_format == "jsonl":
        record = {"time": round(prediction.time, 3), "emotion": prediction.emotion, "probability": round(prediction.probability, 6)}
        if prediction.probabilities is None:
            record["silence"] = True
        else:
            record["probabilities"] = {label: round(value, 6) for label, value in prediction.probabilities.items()}
        return json.dumps(record)
    if prediction.emotion is None:
        return f"{prediction.time:8.2f} s  silence"
    return f"{prediction.time:8.2f} s  {prediction.emotion:<10} {prediction.probability:.2f}"


def run_stream(source: str, run: Run, *, rate: int, speaker_norm: str, output_format: str) -> int:
    """Print one line per hop for ``source`` ("-": standard input; "microphone") until it ends; exit code 0."""
    chunks = pcm_chunks(sys.stdin.buffer, rate) if source == "-" else microphone_chunks(rate)
    for prediction in predict_stream(chunks, run, rate, speaker_norm=speaker_norm):
        print(format_line(prediction, output_format), flush=True)
    return 0
