"""Small pieces shared by the command-line scripts (train.py, infer.py, evaluate.py).

Every command line ends the same way: 0 when the work is done, 2 for a mistake in the
command line (`UsageError` and the project errors derived from it, and argparse's own),
1 when the work failed, 130 on Ctrl-C; an error is one line on stderr, never a traceback.
`run_command` is that mapping, written once.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence

from errors import UsageError  # raised by the library modules, reported here

EXIT_FAILURE = 1  # the work failed (bad data, no network, a damaged file)
EXIT_USAGE = 2  # the command line asked for something impossible (as argparse exits)
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it


def run_command(body: Callable[[], int], *, failures: tuple[type[BaseException], ...], interrupted: str) -> int:
    """Run a command's work and turn what stops it into one line on stderr and an exit code.

    Args:
        body: callable. The work; returns the exit code of a finished run (0, or 1 when
            some inputs failed).
        failures: tuple of exception types. The project's errors that mean "the work
            failed" (exit 1); those that are also a `UsageError` exit 2.
        interrupted: str. What to say on Ctrl-C (exit 130), e.g. how to continue.
    """
    try:
        return body()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except failures as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except ImportError as error:
        print(f"error: {error}; install the requirements: pip install -r requirements.txt", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:  # a file system fault: read-only, full, missing; the path and the cause
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"interrupted{'; ' + interrupted if interrupted else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED


# What TensorFlow's (and Ray's) C++ side writes to stderr on its own (start-up notes, CPU features, CUDA
# probing on machines without a GPU, kernel fallbacks): absl log lines and their preamble.
LIBRARY_NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions:"
    rb"|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWEF] \d+ \d+\] \w+\.cc:\d+:)"  # Ray's core (C++), --engine ray
)


def filter_library_noise(verbose: bool) -> None:
    """Keep the libraries' own log lines off this process's stderr, unless ``verbose``.

    For the command lines, called before anything is imported: TensorFlow writes its C++
    log lines to file descriptor 2 directly, some of them before any setting of ours
    could apply, so file descriptor 2 is routed through a pipe whose reader passes on
    every line but those (`LIBRARY_NOISE`). Python's ``sys.stderr`` (this project's
    messages, logs, warnings, tracebacks, progress bars) writes to the original stderr
    directly, so a progress bar still sees a terminal. At exit the pipe is closed and
    drained, so no line is lost.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    # Python's own writes (logs, progress bars, errors) go straight to the original stderr:
    # a progress bar sees the terminal, where it would see a pipe through fd 2.
    sys.stderr = os.fdopen(os.dup(original), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source, os.fdopen(os.dup(original), "wb", buffering=0) as sink:
            for line in source:
                if not LIBRARY_NOISE.match(line):
                    sink.write(line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last writer here: the reader sees its end
        thread.join(timeout=5)

    atexit.register(drain)


LIBRARY_LOGGERS = ("tensorflow", "matplotlib")  # their INFO notes (an exporter's scratch folder, a font scan) are not ours


def log_to_stderr(level: int, format: str) -> None:
    """A command line's logging: ``level`` and ``format`` on stderr, the libraries' own notes from warnings up."""
    logging.basicConfig(level=level, format=format, stream=sys.stderr)
    for library in LIBRARY_LOGGERS:
        logging.getLogger(library).setLevel(max(level, logging.WARNING))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``-h`` with each option's default, where one says something.

    Left out: plain switches (``--resume``: their default is "off", and ``--no-download``
    would read "default: True"), options whose default is None (their help says what
    happens then), and help that already names its default. A ``--x/--no-x`` pair says
    "default: on" or "default: off".
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        if isinstance(action, argparse.BooleanOptionalAction) and isinstance(action.default, bool):
            return f"{action.help} (default: {'on' if action.default else 'off'})"
        if action.nargs == 0 or action.default is None or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _Unset(list):
    """The marker of `given_options`."""


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the options set on the command line ``argv`` (as opposed to left at their defaults)."""
    unset = _Unset()
    names = vars(parser.parse_args(argv))
    # argparse fills in a default only where the namespace lacks the name: a marker shows what was parsed
    # (a list, which an "append" option copies before adding to it).
    parsed = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(names, unset)))
    return {name for name, value in vars(parsed).items() if value is not unset}


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 0 and below 1")
    return value
