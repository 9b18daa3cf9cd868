"""``python -m sngrad data {prepare,profile,list}``: the data rule's and ``make data``'s entry."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sngrad.data.download import DATA_DIR_ENV
from sngrad.data.files import save_splits
from sngrad.data.registry import DATASETS, REGISTRY, get_spec
from sngrad.data.splits import (
    Splits,
    check_fraction,
    check_seed,
    check_train_size,
    load_dataset,
)
from sngrad.errors import SngradError

# --------------------------------------------------------------------------- command line


def _describe(splits: Splits) -> str:
    sizes = splits.meta["sizes"]
    return (
        f"{splits.name}: train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; "
        f"{splits.x_train.shape[1]} features, {splits.num_classes} classes"
    )


def describe_source(source: dict) -> str:
    """One line: where the data came from and which content hashes were verified."""
    if source.get("kind") == "embedded":
        return f"source: embedded ({source.get('loader', '?')})"
    where = source.get("source") or source.get("route", "?")
    if source.get("route") == "cache":
        first = source.get("first_obtained_from")
        origin = first.get("source", "?") if isinstance(first, dict) else first
        where = f"cache {source.get('path')} (first obtained from {origin})"
    files = source.get("files", {})
    verified = [
        f"{name.removesuffix('.gz')} {check['content_sha256'][:12]}"
        for name, check in files.items()
        if check.get("content_verified")
    ]
    if verified:
        return f"source: {where}; content sha256 verified: {', '.join(verified)}"
    return f"source: {where}; archive sha256 verified for {', '.join(files) or 'no file'}"


def _list() -> int:
    print(f"{'name':<14} {'source':<9} {'shape':<12} {'classes':>7}  normalisation  description")
    for spec in REGISTRY.values():
        shape = "x".join(map(str, spec.shape))
        print(
            f"{spec.name:<14} {spec.kind:<9} {shape:<12} {spec.num_classes:>7}  "
            f"{spec.normalisation:<13}  {spec.description}"
        )
    return 0


def _train_size_arg(text: str) -> int | None:
    if text.lower() in ("all", "none", "null"):
        return None
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def prepare(
    name: str,
    out: str | os.PathLike,
    *,
    data_dir=None,
    seed: int = 0,
    val_fraction: float = 0.1,
    train_size: int | None = None,
) -> Splits:
    """Load ``name`` and write its splits; prints what was written and where the data came from."""
    splits = load_dataset(
        name, data_dir=data_dir, seed=seed, val_fraction=val_fraction, train_size=train_size
    )
    written = save_splits(splits, out)
    print(f"wrote {written} ({_describe(splits)})")
    print(f"  {splits.name} {describe_source(splits.meta['source'])}")
    return splits


def _profile_settings(config_path: str) -> tuple[str, list[str], dict]:
    """(profile, datasets, data settings) of a profile YAML, checked before any work."""
    import yaml

    try:
        config = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SngradError(f"cannot read profile {config_path!r} ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise SngradError(f"{config_path}: expected a mapping with profile, datasets and data")
    profile, datasets = config.get("profile"), config.get("datasets")
    settings = config.get("data") or {}
    if not isinstance(profile, str) or not isinstance(datasets, list) or not datasets:
        raise SngradError(f"{config_path}: needs 'profile' (a name) and a 'datasets' list")
    if not isinstance(settings, dict):
        raise SngradError(f"{config_path}: 'data' must map seed, val_fraction, train_size")
    for dataset in datasets:
        get_spec(dataset)
    check_seed(settings.get("seed", 0))
    check_fraction(settings.get("val_fraction", 0.1))
    check_train_size(settings.get("train_size"))
    return profile, datasets, settings


def prepare_profile(config_path: str, *, data_dir=None) -> list[Path]:
    """Every dataset of a profile into ``Layout(profile).data(name)`` (``make data``)."""
    from sngrad.layout import Layout

    profile, datasets, settings = _profile_settings(config_path)
    layout = Layout(profile)
    written = []
    for dataset in datasets:
        out = Path(layout.data(dataset))
        prepare(
            dataset,
            out,
            data_dir=data_dir,
            seed=settings.get("seed", 0),
            val_fraction=settings.get("val_fraction", 0.1),
            train_size=settings.get("train_size"),
        )
        written.append(out)
    return written


def cli(argv: list[str]) -> int:
    """``python -m sngrad data {prepare,profile,list}``."""
    parser = argparse.ArgumentParser(
        prog="python -m sngrad data", description="prepare the splits of a dataset"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cache_help = f"download cache (default ${DATA_DIR_ENV} or ~/.cache/sngrad)"
    prepare_cmd = commands.add_parser("prepare", help="write NAME's splits to an .npz + .json")
    prepare_cmd.add_argument("name", metavar="NAME", help=f"one of: {', '.join(DATASETS)}")
    prepare_cmd.add_argument("--out", required=True, help="output file, e.g. results/data/NAME.npz")
    prepare_cmd.add_argument("--data-dir", default=None, help=cache_help)
    prepare_cmd.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    prepare_cmd.add_argument("--val-fraction", type=float, default=0.1, help="default 0.1")
    prepare_cmd.add_argument(
        "--train-size",
        type=_train_size_arg,
        default=None,
        help="keep a stratified subset of N training examples (default: all)",
    )
    profile_cmd = commands.add_parser(
        "profile", help="prepare every dataset of a profile into results/<profile>/data/"
    )
    profile_cmd.add_argument("config", help="profile YAML, e.g. config/default.yaml")
    profile_cmd.add_argument("--data-dir", default=None, help=cache_help)
    commands.add_parser("list", help="show the dataset registry")
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list()
    if args.command == "profile":
        prepare_profile(args.config, data_dir=args.data_dir)
        return 0
    prepare(
        args.name,
        args.out,
        data_dir=args.data_dir,
        seed=args.seed,
        val_fraction=args.val_fraction,
        train_size=args.train_size,
    )
    return 0
