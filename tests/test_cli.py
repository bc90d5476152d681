"""cli.py and every command line: exit codes, one-line errors, quick help, progress bars on a terminal."""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

import cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["train.py", "infer.py", "evaluate.py", "export.py", "demo.py", *sorted(f"bench/{path.name}" for path in (ROOT / "bench").glob("*.py"))]
HEAVY = ("keras", "tensorflow", "jax", "torch", "sklearn", "librosa.feature", "matplotlib")  # what -h must not load
HELP_SECONDS = 2.0  # the goal for -h on a 2-core machine


def test_a_file_system_fault_is_one_line_naming_the_path_exit_1(capsys):
    def full_disk() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/.partial-x/model.keras")

    assert cli.run_command(full_disk, failures=(), interrupted="") == cli.EXIT_FAILURE
    assert capsys.readouterr().err == "error: /runs/.partial-x/model.keras: No space left on device\n"


def test_given_options_are_those_typed_not_those_defaulted():
    parser = argparse.ArgumentParser()
    parser.add_argument("epochs", type=int)
    parser.add_argument("--head", default="stats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False)
    assert cli.given_options(parser, ["3", "--seed", "0", "--no-augment"]) == {"epochs", "seed", "augment"}
    assert cli.given_options(parser, ["3"]) == {"epochs"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_quick_and_loads_no_framework(script):
    probe = (
        "import runpy, sys, time\n"
        f"sys.argv = [{script!r}, '-h']\n"
        "start = time.perf_counter()\n"
        "try:\n"
        f"    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules), file=sys.stderr)\n"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"  # no framework imported for the help
    assert "usage:" in result.stdout
    print(f"{script} -h: {seconds:.2f} s (goal {HELP_SECONDS} s)")


def test_the_noise_filter_leaves_python_a_terminal_to_draw_progress_bars_on():
    # Under a pseudo-terminal, as in a shell: the filter pipes fd 2, and sys.stderr must still be the terminal.
    probe = (
        "import sys, os, tqdm\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import cli\n"
        "cli.filter_library_noise(verbose=False)\n"
        "os.write(2, b'I0000 00:00:1.0 1 port.cc:153] library noise\\n')\n"
        "print('stderr is a terminal:', sys.stderr.isatty(), file=sys.stderr)\n"
        "bar = tqdm.tqdm(total=2, desc='progress-bar-shown'); bar.update(2); bar.close()\n"
    )
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    process = subprocess.Popen([sys.executable, "-c", probe], stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert "stderr is a terminal: True" in text and "progress-bar-shown" in text
    assert "library noise" not in text
