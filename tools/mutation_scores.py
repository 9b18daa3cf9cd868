"""Mutation testing of the modules that decide results (``make mutate``; not part of ``make test``).

A *mutant* is a copy of a module with one small change inside one function: an operator
flipped (``<`` to ``<=``, ``+`` to ``-``), a constant moved (``0`` to ``1``), an argument or a
call dropped. mutmut (3.x, pinned in requirements.lock) runs, for each mutant, the tests that
call the mutated function (it learns which from one instrumented run of the test selection).
A test failure *kills* the mutant; a mutant that no test notices *survives*: a wrong result the
suite would let through, or an equivalent change (same behaviour, nothing to test).

    score = detected / checked,   detected = killed + timeout + crashed,
                                  checked  = detected + survived + no tests

"no tests" counts against the score: no selected test calls the function at all.

What is mutated and with which tests is ``[tool.mutmut]`` in pyproject.toml (``only_mutate``,
``pytest_add_cli_args_test_selection``). The run happens in a scratch copy of the repository,
``.cache/mutation/`` (git-ignored), so the working tree is never touched and other work in it
goes on. On a small machine ``--sample N`` checks a seeded random sample of N mutants per
module instead of all of them (the score is then an estimate; the table prints its 95 %
Wilson interval); ``--without GLOB`` leaves test files out of the selection, e.g. to measure
a baseline before new tests.

    python tools/mutation_scores.py run [--sample N] [--seed S] [--jobs J] [--without GLOB]
                                        [--deselect TEST_ID] [--keep-source [--survivors-only]]
    python tools/mutation_scores.py table          # per-module scores of the last run
    python tools/mutation_scores.py survivors      # each surviving mutant's diff
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "mutation"
SAMPLE_FILE = WORK / "sample.json"
# test inputs besides src/ and tests/ that the selected tests read through the repository root
EXTRA_PATHS = ("pyproject.toml", "paper/templates", "config", "workflow", "analysis")
# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code), grouped for the score
DETECTED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout",
            152: "timeout", 255: "timeout", -11: "crashed", -9: "crashed"}
UNDETECTED = {0: "survived", 5: "no tests", 33: "no tests"}


def mutmut_config(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]


def mutant_names(path: Path, relative: str) -> list[str]:
    """Every mutant mutmut makes of one module, by the names ``mutmut run`` accepts."""
    from mutmut.mutation.file_mutation import mutate_file_contents
    from mutmut.utils.format_utils import get_mutant_name

    mutated = mutate_file_contents(relative, path.read_text())
    return sorted(get_mutant_name(Path(relative), name) for name in mutated.mutant_names)


def draw_sample(modules: list[str], n: int, seed: int) -> tuple[dict, dict]:
    """({module: mutant names to check}, {module: number of mutants}): all of a module's
    mutants (n = 0) or n of them drawn without replacement, seeded by (seed, module)."""
    chosen, totals = {}, {}
    for module in modules:
        names = mutant_names(ROOT / module, module)
        totals[module] = len(names)
        if n and len(names) > n:
            names = sorted(random.Random(f"{seed}:{module}").sample(names, n))
        chosen[module] = names
    return chosen, totals


def prepare_workspace(without: list[str], deselect: list[str], keep_source: bool) -> None:
    """A fresh copy of src/, tests/ and the test inputs; earlier mutants/ results are kept.
    With ``keep_source`` the copied src/ of the last run stays: new tests, same mutants."""
    WORK.mkdir(parents=True, exist_ok=True)
    if keep_source:  # the code as it was; the tests and the selection anew
        names = ("tests", "pyproject.toml")
    else:
        names = ("src", "tests", *EXTRA_PATHS)
    for name in names:
        source, target = ROOT / name, WORK / name
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, target)
    if without:
        text = (WORK / "pyproject.toml").read_text()
        selection = mutmut_config(WORK)["pytest_add_cli_args_test_selection"]
        kept = [t for t in selection if not any(fnmatch.fnmatch(t, g) for g in without)]
        new = "pytest_add_cli_args_test_selection = " + json.dumps(kept)
        text = re.sub(r"pytest_add_cli_args_test_selection\s*=\s*\[.*?\]", new, text,
                      count=1, flags=re.S)
        (WORK / "pyproject.toml").write_text(text)
    if deselect:
        text = (WORK / "pyproject.toml").read_text()
        extra = "".join(f'"--deselect", {json.dumps(node)}, ' for node in deselect)
        text = re.sub(r"pytest_add_cli_args\s*=\s*\[", "pytest_add_cli_args = [" + extra, text,
                      count=1)
        (WORK / "pyproject.toml").write_text(text)


def run(args) -> int:
    modules = mutmut_config()["only_mutate"]
    verdicts: dict[str, int | None] = {}
    if args.keep_source:  # the same mutants as the last run, with the tests as they are now
        last = json.loads(SAMPLE_FILE.read_text())
        sample, totals = last["mutants"], last["totals"]
        args.sample, args.seed = last["sample"], last["seed"]
        verdicts = last.get("verdicts", {})
    else:
        sample, totals = draw_sample(modules, args.sample, args.seed)
    prepare_workspace(args.without, args.deselect, args.keep_source)
    info = {"sample": args.sample, "seed": args.seed, "without": args.without,
            "deselect": args.deselect, "totals": totals, "mutants": sample,
            "verdicts": verdicts}
    SAMPLE_FILE.write_text(json.dumps(info, indent=1))
    names = [name for group in sample.values() for name in group]
    if args.keep_source and args.survivors_only:
        # adding tests cannot revive a killed mutant of unchanged code: recheck only the rest
        names = [name for name in names if verdicts.get(name) not in DETECTED]
    print(f"mutmut: {len(names)} mutants of {len(modules)} modules in {WORK}", flush=True)
    mutmut = Path(sys.executable).with_name("mutmut")
    # CI=1: tests/conftest.py's derandomised hypothesis profile, so that a mutant's verdict
    # does not depend on the examples drawn
    env = {**os.environ, "CI": "1"}
    with open(WORK / "run.log", "w") as log:
        rc = subprocess.call([str(mutmut), "run", "--max-children", str(args.jobs), *names],
                             cwd=WORK, stdout=log, stderr=subprocess.STDOUT, env=env)
    # mutmut forgets its verdicts when the test selection changes; keep each mutant's last
    # verdict here, and a detection for good (more tests of the same code cannot undo it)
    for module, group in sample.items():
        results = _results(module)
        for name in group:
            if verdicts.get(name) not in DETECTED and results.get(name) is not None:
                verdicts[name] = results[name]
    SAMPLE_FILE.write_text(json.dumps(info, indent=1))
    table(args)
    if rc:
        print(f"mutmut exited with {rc}; its output: {WORK / 'run.log'}")
    return rc


def _results(module: str) -> dict[str, int | None]:
    meta = WORK / "mutants" / f"{module}.meta"
    if not meta.exists():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def status_counts(module: str, names: list[str], verdicts: dict | None = None) -> Counter:
    results = verdicts if verdicts is not None else _results(module)
    counts = Counter()
    for name in names:
        code = results.get(name)
        counts[DETECTED.get(code) or UNDETECTED.get(code)
               or ("not checked" if code is None else "other")] += 1
    return counts


def table(args=None) -> int:
    info = json.loads(SAMPLE_FILE.read_text())
    print(f"sample per module: {info['sample'] or 'all'} (seed {info['seed']}); "
          f"tests left out: {info['without'] or 'none'}; "
          f"deselected: {info.get('deselect') or 'none'}")
    head = ("module", "mutants", "checked", "killed", "timeout", "survived", "no tests", "score",
            "95% CI")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for module, names in info["mutants"].items():
        c = status_counts(module, names, info.get("verdicts"))
        detected = c["killed"] + c["timeout"] + c["crashed"]
        checked = detected + c["survived"] + c["no tests"]
        lo, hi = wilson(detected, checked)
        score = f"{detected / checked:.0%}" if checked else "-"
        cells = (module, info["totals"][module], f"{checked}/{len(names)}", c["killed"],
                 c["timeout"], c["survived"], c["no tests"], score, f"{lo:.0%}-{hi:.0%}")
        print("| " + " | ".join(map(str, cells)) + " |")
    return 0


def survivors(args) -> int:
    info = json.loads(SAMPLE_FILE.read_text())
    mutmut = Path(sys.executable).with_name("mutmut")
    for module, names in info["mutants"].items():
        results = info.get("verdicts") or _results(module)
        for name in names:
            if UNDETECTED.get(results.get(name)):
                if args.diff:
                    subprocess.call([str(mutmut), "show", name], cwd=WORK)
                else:
                    print(f"{UNDETECTED[results[name]]}: {name}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="generate and check mutants, then print the table")
    p.add_argument("--sample", type=int, default=0, help="mutants per module (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="parallel mutant workers")
    p.add_argument("--without", action="append", default=[],
                   help="glob of test files to leave out of the selection (repeatable)")
    p.add_argument("--deselect", action="append", default=[],
                   help="a test id to leave out (repeatable), e.g. one that fails on the "
                        "unmutated code")
    p.add_argument("--keep-source", action="store_true",
                   help="keep the last run's source and sample; refresh only tests/ and "
                        "the selection")
    p.add_argument("--survivors-only", action="store_true",
                   help="with --keep-source: recheck only the mutants not yet detected")
    p.set_defaults(fn=run)
    sub.add_parser("table", help="per-module scores of the last run").set_defaults(fn=table)
    p = sub.add_parser("survivors", help="surviving and untested mutants of the last run")
    p.add_argument("--diff", action="store_true", help="print each one's diff")
    p.set_defaults(fn=survivors)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
