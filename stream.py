"""Emotions of a live stream, one prediction per hop: raw PCM from standard input, or the microphone.

    python infer.py --stream -            # 16-bit little-endian mono PCM at --stream-rate on stdin
    python infer.py --stream              # the default microphone (the optional sounddevice package)

Every `HOP_SECONDS` the segments of the last `WINDOW_SECONDS` are classified (`runs.Run`'s forward
API). The segments lie on the stream's own grid (one every ``segment_hop`` frames from its start)
and each is embedded once, when its frames and their delta context have arrived (`WindowEmbeddings`):
a hop embeds only the segments it completed, `HOP_SECONDS` being three segment hops. A segment's
features are those of the whole stream (`utils.get_framed_log_melspectrogram`) except for the dB
floor, ``top_db`` below the loudest frame of the window in which it was completed.
For a run trained with speaker normalisation the embeddings are standardised with a running
estimate of the stream's own statistics (`normalization.RunningStatistics`, the stream taken as one
speaker, each segment counted once), the training speakers' until `RUNNING_MIN_SEGMENTS` segments were
seen; a prosodic branch's vectors (one per hop, of the window) alike, after `RUNNING_MIN_VECTORS` hops.
A hop whose audio never reaches `utils.SILENCE_PEAK` is reported as silence, not as an emotion, embeds
nothing and leaves the statistics alone. Audio at another rate is resampled as it comes (soxr's
streaming resampler).
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

# A prediction every hop: three segment hops of the default features (32 frames of 10 ms), so every
# hop completes the same number of segments and embeds only those.
HOP_SECONDS = 0.96
WINDOW_SECONDS = 3.0  # the audio each prediction sees: the last seconds of the stream
RUNNING_MIN_SEGMENTS = 20  # segments seen (each once) before the stream's own statistics replace the training speakers'
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


class WindowEmbeddings:
    """The embeddings of the segments in a stream's last window, each segment embedded once.

    Segments start every ``segment_hop`` frames from the stream's first sample. One is embedded
    when its frames and the ``delta_width // 2`` frames after it are complete (their STFT windows
    inside the audio received); it stays while its left context (as many frames before it, and
    their STFT windows) lies inside the window. Its features then equal the whole stream's, but for
    the dB floor (``top_db`` below the loudest frame of the window that completed it).

    Parameters
    ----------
    run : runs.Run
    window : float > 0, in seconds
        The audio kept: the last ``window`` seconds of the stream.
    """

    def __init__(self, run: Run, window: float = WINDOW_SECONDS) -> None:
        self.run = run
        self.features = run.features
        self.keep = int(round(window * self.features.sr))
        self.audio = np.zeros(0, dtype=np.float32)
        self.received = 0  # samples of the stream so far
        self.embeddings: dict[int, np.ndarray] = {}  # first frame of a segment -> its embedding (features,)
        # Frames a segment needs on either side of its own: the deltas' half width, and on the left the frames whose
        # STFT windows reach before the window's first sample (half an FFT, and one sample for the pre-emphasis).
        context = self.features.delta_width // 2
        self.left_frames = context + -(-(self.features.n_fft // 2 + 1) // self.features.hop_length)
        self.right_samples = (self.features.segment_frames - 1 + context) * self.features.hop_length + self.features.n_fft // 2

    def append(self, chunk: np.ndarray) -> None:
        """Add ``chunk`` (samples,) of audio at the run's rate to the stream; nothing is computed."""
        self.received += len(chunk)
        self.audio = np.concatenate([self.audio, chunk])[-self.keep :]

    def update(self) -> tuple[np.ndarray, np.ndarray]:
        """Embed the window's segments completed since the last call.

        Returns
        -------
        window : np.ndarray [shape=(segments, features), dtype=float32]
            The embeddings of the segments in the window, in order (none while the stream is shorter than a segment).
        new : np.ndarray [shape=(new_segments, features), dtype=float32]
            Those embedded by this call.
        """
        features, hop = self.features, self.features.hop_length
        origin = self.received - len(self.audio)
        skip = -origin % hop  # the window's audio from its first whole frame of the stream's grid
        first_frame = (origin + skip) // hop
        # At the stream's start its first frames are padded as a file's are: a segment at 0 needs no left context.
        oldest = 0 if origin == 0 else first_frame + self.left_frames
        oldest = -(-oldest // features.segment_hop) * features.segment_hop
        self.embeddings = {start: row for start, row in self.embeddings.items() if start >= oldest}
        starts = [start for start in range(oldest, self.received // hop + 1, features.segment_hop)
                  if start not in self.embeddings and start * hop + self.right_samples <= self.received]
        new = np.zeros((0, self.run.model.encoder.features), dtype=np.float32)
        if starts:
            frames = utils.add_deltas(utils.log_mel_spectrogram(self.audio[skip:], features), features)
            segments = np.stack([frames[start - first_frame : start - first_frame + features.segment_frames] for start in starts])
            new = self.run.embed(segments[np.newaxis])[0]
            self.embeddings.update(zip(starts, new))
        window = [self.embeddings[start] for start in sorted(self.embeddings)]
        return (np.stack(window) if window else new), new


def predict_stream(
    chunks: Iterable[np.ndarray],
    run: Run,
    rate: int,
    *,
    speaker_norm: str = "running",
    window: float = WINDOW_SECONDS,
) -> Iterator[StreamPrediction]:
    """One prediction per chunk (a hop) of the segments in the last ``window`` seconds of the stream.

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

    from normalization import GroupStatistics

    if speaker_norm not in ("running", "none"):
        raise ValueError(f"speaker_norm must be 'running' or 'none', got {speaker_norm!r}")
    sr = run.features.sr
    resampler = None if rate == sr else soxr.ResampleStream(rate, sr, 1, dtype="float32")
    embedder = WindowEmbeddings(run, window)
    group = GroupStatistics(min_segments=RUNNING_MIN_SEGMENTS, min_vectors=RUNNING_MIN_VECTORS)
    received = 0
    for chunk in chunks:
        received += len(chunk)
        chunk = np.asarray(chunk, dtype=np.float32) if resampler is None else resampler.resample_chunk(np.asarray(chunk, np.float32))
        embedder.append(chunk)
        now = received / rate
        if embedder.received == 0 or np.max(np.abs(chunk), initial=0.0) < utils.SILENCE_PEAK:
            yield StreamPrediction(now, None, 0.0, None)
            continue
        embeddings, new = embedder.update()
        if len(embeddings) == 0:  # shorter than a segment so far: one padded segment, as a file this short gets
            segments, vector = run.preprocess(embedder.audio)
            embeddings = run.embed(segments[np.newaxis])[0]
        else:
            vector = run.prosody_of(embedder.audio)
        prosody = None if vector is None else vector[np.newaxis]
        if speaker_norm == "none":
            probabilities = run.classify(embeddings[np.newaxis], prosody=prosody)[0]  # the training speakers' statistics, as inference.predict and the exports
        else:
            group.update(new, vector)
            probabilities = run.classify(embeddings[np.newaxis], prosody=prosody, **group.standardization())[0]
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
