"""Command-line parsing of ``python -m sngrad tune | train | reference``.

Bad arguments are one-line :class:`SngradError` messages (exit status 2), raised before any
data is loaded or any run trained.
"""

from __future__ import annotations

import argparse

from sngrad.errors import SngradError
from sngrad.names import RunName, parse_run
from sngrad.spec import parse_spec


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as SngradError (one line, exit status 2)."""

    def error(self, message):
        raise SngradError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _run_name(text: str) -> RunName:
    """``--optimizer``: the run name, parsed here once (the rest of the command takes the
    value)."""
    try:
        return parse_run(text)
    except SngradError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser(command: str, *, optimizer: bool = True, hparams: bool = False) -> _Parser:
    p = _Parser(prog=f"python -m sngrad {command}")
    p.add_argument("--data", required=True, help="splits file written by `sngrad data prepare`")
    if optimizer:
        p.add_argument("--optimizer", required=True, type=_run_name,
                       help="run name: a registry optimizer, e.g. sgd, adam+sngrad2, or "
                            "sgd+sngrad1@0.1 (fixed raw alpha)")
    p.add_argument("--batch-size", required=True, type=_positive_int)
    p.add_argument("--spec", required=True, help="training spec: JSON text or @file.json")
    if hparams:
        p.add_argument("--hparams", required=True, help="best.json written by `sngrad tune`")
    p.add_argument("--out-dir", required=True, help="folder of the result files")
    return p


def cli_tune(argv: list[str]) -> int:
    from sngrad.train.commands import tune

    args = _parser("tune").parse_args(argv)
    tune(args.data, args.optimizer, args.batch_size, parse_spec(args.spec), args.out_dir, argv)
    return 0


def cli_train(argv: list[str]) -> int:
    from sngrad.train.commands import train

    args = _parser("train", hparams=True).parse_args(argv)
    train(args.data, args.optimizer, args.batch_size, parse_spec(args.spec), args.hparams,
          args.out_dir, argv)
    return 0


def cli_reference(argv: list[str]) -> int:
    from sngrad.train.commands import reference

    args = _parser("reference", optimizer=False, hparams=True).parse_args(argv)
    reference(args.data, parse_spec(args.spec), args.hparams, args.batch_size, args.out_dir,
              argv)
    return 0
