#!/usr/bin/env python3
"""Mutation testing of the modules that define iqa's numbers and contracts (TESTING.md).

    python scripts/mutation_test.py                      # every module below
    python scripts/mutation_test.py contract metrics     # some of them
    python scripts/mutation_test.py trainer --list       # the selected mutants, not run

mutmut (the dev extra) never touches the working tree: each module is staged into its own
folder under --workdir (default: $TMPDIR/iqa-mutation) as a regular ``iqa`` package,
because mutmut names a mutant after its file path and only activates it when the
running module has that name (``iqa.training.metrics``, not ``training.metrics``). mutmut
then copies the stage into ``<stage>/mutants/`` and mutates that copy.

Each module runs only the tests that target it, and, where the issue scopes a module to
some of its parts, only the mutants of those functions (and, inside the long
``Trainer.fit``, only the mutants whose changed line is about checkpoint selection or
resuming). Everything runs under ``nice -n 19``: it is slow, and it is not part of
.ci/run. Results: a table on stdout and ``<workdir>/<module>/report.json``, with the diff
of every surviving mutant, to be judged in TESTING.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Top-level folders that become the iqa.* subpackages (pyproject's package-dir).
PACKAGES = ("inference", "training", "models")


@dataclass(frozen=True)
class Target:
    source: str  # path in the repository
    tests: tuple[str, ...]
    # fnmatch patterns on the mangled function name (``x_f`` or ``xǁClassǁmethod``);
    # empty: every function of the file.
    functions: tuple[str, ...] = ()
    # Per function pattern: a regex the mutant's changed lines must match to be kept.
    line_filters: dict[str, str] = field(default_factory=dict)
    torch: bool = False  # fork from a torch-free server (torch is not fork-safe)


TARGETS: dict[str, Target] = {
    "contract": Target("inference/contract.py", ("tests/test_contract_pinned.py",)),
    "preprocess": Target("inference/preprocess.py",
                         ("tests/test_contract_pinned.py", "tests/test_batch_pixels.py")),
    "metrics": Target("training/metrics.py",
                      ("tests/test_metrics.py", "tests/test_metrics_oracles.py")),
    "export": Target(
        "training/export.py",
        ("tests/test_export_parity_strict.py",),
        functions=("x_default_metadata", "x__as_text", "x_set_metadata",
                   "x_checkpoint_metadata", "x_license_text"),
        torch=True,
    ),
    "parity": Target(
        "training/parity.py",
        ("tests/test_export_parity_strict.py",),
        functions=("xǁParityReportǁ*", "x_check_parity", "x_parity_sizes", "x_parity_inputs"),
        torch=True,
    ),
    "trainer": Target(
        "training/trainer.py",
        ("tests/test_trainer_selection.py", "tests/test_train_resume.py",
         "tests/test_train_units.py"),
        functions=("xǁTrainerǁ_state", "xǁTrainerǁ_restore", "xǁTrainerǁfit"),
        # fit is the whole loop; the selection and resume lines are the ones in scope.
        line_filters={"xǁTrainerǁfit": r"best|improved|described|history|resume|_restore"
                                        r"|in_epoch|finished|next_epoch|every|LAST|BEST"},
        torch=True,
    ),
    "run_log": Target(
        "training/run_log.py",
        ("tests/test_trainer_selection.py", "tests/test_train_resume.py",
         "tests/test_train_units.py"),
        functions=("xǁMetricsLogǁ_truncate",),
        torch=True,
    ),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          -9: "killed (signal)", -11: "segfault", None: "not checked"}

# Run inside the stage with mutmut's own functions: generate the mutants, then list each
# one with its diff, as JSON in the file named by argv[1] (mutmut prints to stdout).
_LIST_MUTANTS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from mutmut.__main__ import copy_src_dir, create_mutants
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.utils.file_utils import copy_also_copy_files, setup_source_paths, walk_mutatable_files
    import mutmut.__main__ as main
    main.set_mutant_under_test("mutant_generation")
    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)
    out = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            out[name] = {"exit_code": code, "diff": get_diff_for_mutant(name, path=data.path)}
    Path(sys.argv[1]).write_text(json.dumps(out))
""")


def stage(target: Target, folder: Path) -> None:
    """A copy of the package as ``iqa/``, the tests, the configs, and a mutmut config."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    (folder / "iqa").mkdir()
    (folder / "iqa" / "__init__.py").write_text("")  # shadows the editable install's iqa
    for name in PACKAGES:
        shutil.copytree(REPO / name, folder / "iqa" / name, ignore=ignore)
    shutil.copytree(REPO / "tests", folder / "tests", ignore=ignore)
    shutil.copytree(REPO / "configs", folder / "configs", ignore=ignore)
    mutated = "iqa/" + target.source
    config = {
        "source_paths": ["iqa"],
        "only_mutate": [mutated],
        "also_copy": ["configs"],
        "pytest_add_cli_args_test_selection": list(target.tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-x", "-q"],
        "use_git_change_detection": False,
        # CPU-time limit per mutant: 2 x this x the tests' time. mutmut's 15 lets an
        # infinite-loop mutant burn minutes; 5 is ample for a niced run on a busy machine.
        "timeout_multiplier": 5.0,
        "process_isolation": "forkserver" if target.torch else "fork",
    }
    lines = ["[tool.pytest.ini_options]", 'testpaths = ["tests"]', "timeout = 600",
             'markers = ["slow: takes more than a few seconds"]', "", "[tool.mutmut]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")


def list_mutants(folder: Path, env: dict) -> dict[str, dict]:
    out = folder / "mutants.json"
    subprocess.run([sys.executable, "-c", _LIST_MUTANTS, str(out)], cwd=folder, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def function_of(name: str) -> str:
    """``iqa.training.trainer.xǁTrainerǁfit__mutmut_12`` -> ``xǁTrainerǁfit``."""
    return name.rpartition(".")[2].partition("__mutmut_")[0]


def changed_lines(diff: str) -> str:
    return "\n".join(line for line in diff.splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))


def select(target: Target, mutants: dict[str, dict]) -> list[str]:
    keep = []
    for name, info in mutants.items():
        function = function_of(name)
        patterns = target.functions or ("*",)
        matched = [p for p in patterns if fnmatch.fnmatchcase(function, p)]
        if not matched:
            continue
        line_filter = target.line_filters.get(matched[0])
        if line_filter and not re.search(line_filter, changed_lines(info["diff"])):
            continue
        keep.append(name)
    return sorted(keep, key=lambda n: (function_of(n), int(n.rpartition("__mutmut_")[2])))


def killed(status: str) -> bool:
    return status.startswith(("killed", "timeout"))


def restage_tests(target: Target, folder: Path) -> dict:
    """For --rerun: today's tests, configs and unmutated modules into an earlier stage;
    the earlier report. The mutated file must be unchanged since the stage was made, or
    its mutants would be of old code."""
    previous = json.loads((folder / "report.json").read_text())
    staged = folder / "iqa" / target.source
    if staged.read_bytes() != (REPO / target.source).read_bytes():
        sys.exit(f"{target.source} changed since {folder} was staged: its mutants are of "
                 "old code; run without --rerun to stage it again")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for where in (folder / "tests", folder / "mutants" / "tests"):
        shutil.copytree(REPO / "tests", where, ignore=ignore, dirs_exist_ok=True)
    for where in (folder / "configs", folder / "mutants" / "configs"):
        shutil.copytree(REPO / "configs", where, ignore=ignore, dirs_exist_ok=True)
    # The rest of the package as it is today; the mutated file (and mutmut's copy of it,
    # with the mutants in it) stays.
    skip = Path(target.source)
    for name in PACKAGES:
        for source in (REPO / name).rglob("*"):
            relative = source.relative_to(REPO)
            if (not source.is_file() or relative == skip or "__pycache__" in relative.parts
                    or source.suffix == ".pyc"):
                continue
            for where in (folder / "iqa", folder / "mutants" / "iqa"):
                (where / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, where / relative)
    # Make mutmut map tests to functions again, so new tests are run for old mutants.
    (folder / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    return previous


def run_module(module: str, workdir: Path, max_children: int, list_only: bool,
               rerun: bool = False, report_only: bool = False,
               recheck_s: float = 0.0) -> dict:
    target = TARGETS[module]
    folder = workdir / module
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    previous = None
    if report_only:  # the state of an earlier (or still running) run, nothing started
        names = select(target, list_mutants(folder, env))
    elif rerun and (folder / "report.json").is_file():
        previous = restage_tests(target, folder)
        names = [n for n, info in previous["mutants"].items() if not killed(info["status"])]
        print(f"{module}: rerunning the {len(names)} mutants that were not killed", flush=True)
    else:
        stage(target, folder)
        mutants = list_mutants(folder, env)
        names = select(target, mutants)
        print(f"{module}: {len(names)} of {len(mutants)} mutants of {target.source} selected",
              flush=True)
    if list_only:
        for name in names:
            print(f"  {name}\n" + textwrap.indent(changed_lines(mutants[name]["diff"]), "      "))
        return {}
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    command = [*nice, sys.executable, "-m", "mutmut", "run", "--max-children",
               str(max_children), *names]
    if not report_only:
        subprocess.run(command, cwd=folder, env=env, check=False)
    results = list_mutants(folder, env)
    report = previous or {"module": target.source, "tests": list(target.tests), "mutants": {}}
    for name in names:
        code = results[name]["exit_code"]
        report["mutants"][name] = {"status": STATUS.get(code, f"exit {code}"),
                                   "diff": results[name]["diff"]}
    if not report_only and recheck_s:  # also an earlier run's timeouts, with today's tests
        for name, info in report["mutants"].items():
            if info["status"] == "timeout":
                status = recheck(target, folder, name, env, nice, recheck_s)
                print(f"  timeout rechecked: {status}: {name}", flush=True)
                report["mutants"][name]["status"] = status
    (folder / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report


def recheck(target: Target, folder: Path, name: str, env: dict, nice: list[str],
            cpu_s: float) -> str:
    """One more run of a mutant that timed out, with all of the target's tests, under a
    limit on CPU time rather than wall-clock time. mutmut's wall-clock limit is half its
    CPU-time limit, and a run under ``nice -n 19`` on a busy machine can be starved past it:
    a mutant that the tests pass would then count as killed. Starving costs no CPU time."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_s), int(cpu_s) + 1))

    command = [*nice, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q",
               *target.tests]
    try:
        code = subprocess.run(command, cwd=folder / "mutants", preexec_fn=limit,
                              env={**env, "MUTANT_UNDER_TEST": name}, timeout=20 * cpu_s,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    except subprocess.TimeoutExpired:  # a hang that burns no CPU (a deadlock, a sleep)
        return "timeout (recheck)"
    status = {0: "survived", 1: "killed"}.get(code, STATUS.get(code, f"exit {code}"))
    return f"{status} (recheck)" if status != "survived" else status


def summary(report: dict) -> str:
    statuses = [m["status"] for m in report["mutants"].values()]
    dead = sum(killed(s) for s in statuses)
    total = len(statuses)
    score = f"{dead / total:.1%}" if total else "n/a"
    others = {s: statuses.count(s) for s in sorted(set(statuses)) if not killed(s)}
    return f"{report['module']}: {dead}/{total} killed ({score}) {others}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"modules to test: {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "iqa-mutation",
                        help="where the staged copies and mutmut's mutants/ go")
    parser.add_argument("--max-children", type=int, default=1,
                        help="parallel mutant runs (default 1: leave the CPUs to others)")
    parser.add_argument("--rerun", action="store_true",
                        help="reuse each module's earlier stage: copy today's tests in and run "
                        "only the mutants that were not killed")
    parser.add_argument("--report-only", action="store_true",
                        help="summarise an earlier or running stage; unchecked mutants show "
                        "as 'not checked'")
    parser.add_argument("--recheck-timeouts", type=float, default=150.0, metavar="SECONDS",
                        help="run each mutant that mutmut timed out once more, directly, with "
                        "this limit on CPU time (default 150: about 5 times the slowest "
                        "target's tests; 0: keep mutmut's verdict)")
    parser.add_argument("--list", action="store_true",
                        help="list the selected mutants and their diffs, run nothing")
    args = parser.parse_args()
    unknown = sorted(set(args.modules) - set(TARGETS))
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if shutil.which("mutmut") is None and not _has_mutmut():
        print("mutmut is missing: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    reports = [run_module(m, args.workdir, args.max_children, args.list, args.rerun,
                          args.report_only, args.recheck_timeouts)
               for m in (args.modules or TARGETS)]
    for report in reports:
        if report:
            print(summary(report))
            for name, info in report["mutants"].items():
                if not killed(info["status"]):
                    print(f"  {info['status']}: {name}\n"
                          + textwrap.indent(changed_lines(info["diff"]), "      "))
    return 0


def _has_mutmut() -> bool:
    try:
        import mutmut  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
