"""Predict the emotion of every audio file with a trained DCNN-BLSTMwA run: the command line of `inference`.

    python infer.py PATH... [--model saved_model/<run>] [--format table|csv|json] [--timeline]

This file parses the command line and writes what `inference.predict` (files),
`inference.predict_on_cluster` (--engine ray) and `stream.run_stream` (--stream) give.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cli
import cluster
import export
import files
import results
import runs
import stream
import utils
from cli import positive_float, positive_int
from errors import UsageError
from files import file_problem, folder_problem, write_atomically
from inference import (
    BATCH_SEGMENTS, BATCH_WINDOWS, CLUSTER_SPEAKER_NORMS, RUNTIMES, SPEAKER_NORM_MODES, audio_files, csv_columns, csv_rows, enrol,
    format_csv, format_json, format_table, json_record, load, parquet_columns, parquet_record, predict, predict_on_cluster,
    refuse_contradictions,
)
from mixed_precision import PRECISIONS
from runs import Run, load_newest_run, load_run

logger = logging.getLogger("infer")

STREAM_NORM = "running"  # --stream's mode: the stream's own running statistics (stream.predict_stream)
MICROPHONE = "microphone"  # --stream without a source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infer.py",
        description="Predict the emotion of audio files with a trained DCNN-BLSTMwA run.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("paths", metavar="PATH", nargs="*", help="audio files and folders (searched recursively); none with --stream")
    parser.add_argument("--model", default=None, help=f"run folder of train.py (default: the newest usable run in {runs.MODEL_ROOT}/; damaged ones are skipped with a warning)")
    parser.add_argument("--format", choices=["table", "csv", "json", *results.FORMATS[1:]], default="table", help="output format; csv and json carry every class probability; with --stream: table or jsonl (one JSON object per hop); with --engine ray: csv, jsonl (one JSON object per file) or parquet (a folder of files, probabilities unrounded)")
    parser.add_argument("--output", default=None, help="write the results to this file instead of standard output (checked before any work; written whole or not at all); with --engine ray (needed there): each result appended as it comes, and a rerun with the same --output predicts only the files it does not hold yet")
    parser.add_argument("--engine", choices=cluster.ENGINES, default="local", help=f"local: this machine's cores; ray: the workers of a Ray cluster (Ray Data, {cluster.INSTALL}), each loading the model once; files and --model must be at the same path on every node; --speaker-norm {' or '.join(CLUSTER_SPEAKER_NORMS)}")
    parser.add_argument("--address", default=None, help="--engine ray: HOST:PORT of a running Ray cluster's head (ray start --head prints it) (default: $RAY_ADDRESS, else a Ray of this machine's cores, started and stopped here)")
    parser.add_argument("--top-k", type=positive_int, default=1, help="emotions listed per file (table, json and jsonl)")
    parser.add_argument("--window", type=positive_float, default=utils.WINDOW_SECONDS, help="seconds per window: longer files are cut into equal windows of about this length, as the exports cut them")
    parser.add_argument("--timeline", action="store_true", help="also give every window's start, end and emotion")
    parser.add_argument("--batch-size", type=positive_int, default=BATCH_WINDOWS, help=f"windows per model call, at most: a call also holds at most {BATCH_SEGMENTS} segments, which bounds memory")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="how the model computes, with --runtime keras (mixed precision from model.keras: float16 for GPUs) or openvino (float32 or bfloat16): bfloat16 is about 1.5x faster on CPUs with bf16 units, probabilities a little off float32's")
    parser.add_argument("--speaker-norm", choices=(*SPEAKER_NORM_MODES, STREAM_NORM), default=None, help="for runs trained with speaker normalisation (train.py's default in frozen mode): standardise with the statistics of each folder (one speaker per folder, with several emotions: folders named after emotions are refused), of each file, of the stream so far (running, --stream only), or of the training speakers (none, as the exported model; also what a window alone in its folder or file gets) (default: none for files; running for a stream of such a run)")
    parser.add_argument("--enroll", action="append", default=None, metavar="PATH", help="a few seconds of the speaker's speech (files or folders; repeat for more): every PATH is that speaker, standardised with the means of these recordings instead of the training speakers' (runs trained with speaker normalisation; three recordings scored 0.57 UAR on RAVDESS, 0.48 without, and no gain on EMO-DB's 2 s files)")
    parser.add_argument("--stream", nargs="?", const=MICROPHONE, default=None, metavar="SOURCE", help=f"predict a live stream, one line per {stream.HOP_SECONDS:g} s hop over its last {stream.WINDOW_SECONDS:g} s, until it ends (exit 0) or Ctrl-C (130): the default microphone (needs the sounddevice package), or - for raw 16-bit little-endian mono PCM on standard input")
    parser.add_argument("--stream-rate", type=positive_int, default=16000, help="sample rate of the PCM on standard input, in Hz (--stream -)")
    parser.add_argument("--runtime", choices=RUNTIMES, default=None, help="what runs the model: its model.keras, or its ONNX export with ONNX Runtime or OpenVINO, or its LiteRT export (made once into RUN/export/ where missing, about 30 s, in a process of its own; training speakers' statistics only, so --speaker-norm none); openvino --precision bfloat16 is the fastest on CPUs with bf16 units (default: onnxruntime, which imports no TensorFlow, where the request allows: no --speaker-norm other than none, no --enroll, float32; else keras)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' own start-up and progress logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.log_to_stderr(logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    if args.stream is not None:
        if args.stream not in ("-", MICROPHONE):
            parser.error(f"--stream {args.stream}: a stream is - (PCM on standard input) or nothing (the microphone); give files as PATH without --stream")
        if args.paths:
            parser.error("--stream reads a live stream: give it no PATH (or drop --stream to predict files)")
        if args.format not in ("table", "jsonl") or args.output is not None or args.engine != "local" or args.speaker_norm in SPEAKER_NORM_MODES[1:] or args.runtime not in (None, "keras") or args.enroll:
            parser.error("--stream prints lines as they come: --format table or jsonl, no --output, --speaker-norm running or none, --runtime keras, no --enroll, --engine local")
    elif not args.paths:
        parser.error("give at least one PATH (or --stream for a live stream)")
    elif args.speaker_norm == STREAM_NORM:
        parser.error(f"--speaker-norm {STREAM_NORM} goes with --stream; for files use --speaker-norm folder or file")
    elif args.engine == "ray":
        if args.output is None or args.format not in results.FORMATS:
            parser.error(f"--engine ray writes each result as it comes: give --output and --format {', '.join(results.FORMATS)}")
        if args.speaker_norm not in (None, *CLUSTER_SPEAKER_NORMS) or args.enroll:
            parser.error(f"--engine ray predicts each file on its own: --speaker-norm {' or '.join(CLUSTER_SPEAKER_NORMS)}, no --enroll")
        if args.timeline and args.format == "parquet":
            parser.error("--timeline gives rows per window: use --format csv or jsonl with it")
    elif args.format in results.FORMATS[1:]:
        parser.error(f"--format {args.format} goes with --engine ray (jsonl with --stream too); for files here use --format json or csv")
    if args.address is not None and args.engine != "ray":
        parser.error("--address joins a Ray cluster: give it with --engine ray")
    if args.output is not None:
        problem = folder_problem(args.output) if args.format == "parquet" else file_problem(args.output)
        if problem:
            parser.error(f"--output {args.output}: {problem}")  # before any work, so no result is lost

    def live() -> int:
        run = load_run(args.model, precision=args.precision) if args.model is not None else load_newest_run(precision=args.precision)
        speaker_norm = args.speaker_norm or (STREAM_NORM if run.speaker_norm else "none")
        if speaker_norm == STREAM_NORM and not run.speaker_norm:
            raise UsageError(f"--speaker-norm {STREAM_NORM}: run {run.folder} was not trained with --speaker-norm; use none")
        return stream.run_stream(args.stream, run, rate=args.stream_rate, speaker_norm=speaker_norm, output_format=args.format)

    if args.stream is not None:
        return cli.run_command(live, failures=(runs.RunError,), interrupted="")

    def work() -> int:
        paths = audio_files(args.paths)  # path mistakes are reported before the model loads
        enrolment_files = audio_files(args.enroll) if args.enroll else None
        speaker_norm = args.speaker_norm or "none"
        exportable = speaker_norm == "none" and not args.enroll and args.precision == "float32" and files.installed("onnxruntime")
        runtime = args.runtime or ("onnxruntime" if exportable else "keras")
        refuse_contradictions(runtime, speaker_norm, bool(args.enroll), args.precision)
        try:
            run = load(args.model, runtime, window=args.window, precision=args.precision)
        except export.ExportError as error:
            if args.runtime is not None:
                raise
            runtime = "keras"
            run = load(args.model, runtime, window=args.window, precision=args.precision)  # a damaged run says so here, in one line
            logger.warning("%s; running its Keras model instead", error)
        if args.engine == "ray":
            return work_on_cluster(run, runtime, paths, speaker_norm)
        enrolment = enrol(enrolment_files, run, window=args.window) if enrolment_files else None
        predictions = predict(
            paths, run, window=args.window, batch_size=args.batch_size, precision=args.precision,
            speaker_norm=speaker_norm, enrolment=enrolment, runtime=runtime,
        )
        good = [p for p in predictions if p.error is None]
        for failed in predictions:
            if failed.error is not None:
                print(f"skipped: {failed.error}", file=sys.stderr)
        if args.format == "table":
            text = format_table(good, run.labels, top_k=args.top_k, timeline=args.timeline) if good else ""
        elif args.format == "csv":
            text = format_csv(good, run.labels, timeline=args.timeline)
        else:
            text = format_json(good, run.labels, top_k=args.top_k, timeline=args.timeline)
        if args.output:
            write_atomically(args.output, text)
        else:
            sys.stdout.write(text)
        return 0 if len(good) == len(predictions) else cli.EXIT_FAILURE

    def work_on_cluster(run: Run | export.ExportedRun, runtime: str, paths: list[Path], speaker_norm: str) -> int:
        if args.format == "csv":
            log = results.ResultLog(args.output, args.format, csv_columns(run.labels, timeline=args.timeline))
            record = functools.partial(csv_rows, labels=run.labels, timeline=args.timeline)
        elif args.format == "jsonl":
            log = results.ResultLog(args.output, args.format)
            record = functools.partial(json_record, labels=run.labels, top_k=args.top_k, timeline=args.timeline)
        else:
            log = results.ResultLog(args.output, args.format, parquet_columns(run.labels))
            record = functools.partial(parquet_record, labels=run.labels)
        failed, nodes = predict_on_cluster(
            paths, run, log, record, runtime=runtime, address=args.address, window=args.window, batch_size=args.batch_size,
            speaker_norm=speaker_norm, verbose=args.verbose,
        )
        for prediction in failed:
            print(f"skipped: {prediction.error}", file=sys.stderr)
        predicted = f"{cluster.nodes_summary(nodes)}; " if nodes else ""
        print(f"done: {predicted}{len(log.done())} of {len(paths)} files in {args.output}", file=sys.stderr)
        return 0 if not failed else cli.EXIT_FAILURE

    interrupted = ("the results so far are kept in --output; run the same command again to continue" if args.engine == "ray"
                   else "no results were written")
    return cli.run_command(work, failures=(runs.RunError, export.ExportError, cluster.ClusterError), interrupted=interrupted)


if __name__ == "__main__":
    cli.filter_library_noise(verbose="--verbose" in sys.argv[1:])
    sys.exit(main())
