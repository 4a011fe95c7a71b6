"""`make mutation`: mutmut over the core modules, resumable, then a score per module.

mutmut 3 re-tests every mutant named on its command line, and with no names it takes the
untested mutants of every module at once. This names the untested mutants of the modules
asked for (all core modules by default), so an interrupted run picks up where it stopped
and one module can be run alone; `--again` re-tests the survivors and the mutants no test
reached too (after a test was added for them), with the module's own tests traced afresh.
Then it prints the table that docs/testing.md records.

`--check NAME ... -k EXPR` is the quick way to see whether a test just written kills given
survivors: the working tree's tests, only those EXPR selects, against each mutant as mutmut
generated it, without touching mutmut's records (a `--again` runs every test of the module
against every survivor: hours for engine's).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

MUTANTS = Path("mutants/src/mnistlab")
STATS = Path("mutants/mutmut-stats.json")


def core_modules() -> list[str]:
    """The modules [tool.mutmut] mutates: src/mnistlab/optim.py -> optim."""
    config = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]
    return [Path(path).stem for path in config["only_mutate"]]


def statuses(module: str) -> dict[str, str]:
    """mutant name -> mutmut's status ("killed", "survived", "not checked", ...)."""
    meta = MUTANTS / f"{module}.py.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def generated_from_current_source(module: str) -> bool:
    """Whether mutants/ holds the module's mutants of its source as it is now."""
    meta, source = MUTANTS / f"{module}.py.meta", Path(f"src/mnistlab/{module}.py")
    return meta.exists() and meta.stat().st_mtime >= source.stat().st_mtime


def to_test(module: str, again: bool) -> list[str]:
    found = statuses(module)
    if not found or not generated_from_current_source(module):
        # Not generated yet, or generated from an older source whose mutants are gone:
        # mutmut generates them afresh, then runs them all.
        return [f"mnistlab.{module}.*"]
    wanted = {"not checked", "survived", "no tests"} if again else {"not checked"}
    return [name for name, status in found.items() if status in wanted]


def forget_tests(module: str) -> None:
    """Drop what mutmut recorded of the module's own tests (`<module>_*.py`), so that it
    records again which functions they reach. It records that once per test, and a
    function changed to call another would otherwise never meet those tests' mutants."""
    if not STATS.exists():
        return
    stats = json.loads(STATS.read_text())
    own = lambda test: test.startswith(f"src/mnistlab/{module}_")  # noqa: E731
    stats["duration_by_test"] = {t: d for t, d in stats["duration_by_test"].items() if not own(t)}
    stats["tests_by_mangled_function_name"] = {
        f: [t for t in tests if not own(t)] for f, tests in stats["tests_by_mangled_function_name"].items()}
    STATS.write_text(json.dumps(stats))


def table(modules: list[str]) -> str:
    rows = ["| module | mutants | killed | timeout | survived | no tests | not checked | killed of tested |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for module in modules:
        count = Counter(statuses(module).values())
        caught = count["killed"] + count["timeout"]
        tested = caught + count["survived"]
        score = f"{100 * caught / tested:.1f}%" if tested else "-"
        rows.append(f"| {module} | {sum(count.values())} | {count['killed']} | {count['timeout']} | "
                    f"{count['survived']} | {count['no tests']} | {count['not checked']} | {score} |")
    return "\n".join(rows)


def check(names: list[str], select: str) -> int:
    """Run the tests `select` picks, from the working tree, against each named mutant: mutmut's
    trampolined copy of the modules with the working tree's test files laid over it, one
    process per mutant, $MUTANT_UNDER_TEST naming it (conftest.py keeps the module's own tests)."""
    for module in {name.split(".")[1] for name in names}:
        if not generated_from_current_source(module):
            print(f"mutants/ holds no mutants of the current src/mnistlab/{module}.py: run "
                  f"`scripts/mutation.py {module}` first", file=sys.stderr)
            return 2
    killed = 0
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        package = Path(tmp) / "src" / "mnistlab"
        shutil.copytree(MUTANTS, package, ignore=shutil.ignore_patterns("*.meta", "__pycache__"))
        for test in [*Path("src/mnistlab").glob("*_test.py"), Path("src/mnistlab/conftest.py")]:
            shutil.copy(test, package / test.name)
        for name in names:
            module = name.split(".")[1]
            env = {**os.environ, "MUTANT_UNDER_TEST": name, "PYTHONPATH": str(package.parent)}
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                   "--rootdir", tmp, "-c", os.devnull, "-k", select,
                                   *map(str, sorted(package.glob(f"{module}_*test.py")))],
                                  cwd=tmp, env=env, capture_output=True, text=True)
            outcome = (done.stdout.strip().splitlines() or ["no output"])[-1]
            # pytest: 0 all passed, 1 some failed; anything else (no test selected, an error
            # collecting) says nothing about the mutant.
            verdict = {0: "survived", 1: "killed  "}.get(done.returncode, "no answer")
            killed += done.returncode == 1
            print(f"{verdict} {name}  ({outcome})")
    print(f"{killed} of {len(names)} killed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="core modules, e.g. optim stats (default: all)")
    parser.add_argument("--again", action="store_true", help="re-test the survivors and the mutants no test reached too")
    parser.add_argument("--table", action="store_true", help="only print the scores")
    parser.add_argument("--check", nargs="+", metavar="NAME", help="mutants to run the tests -k selects against")
    parser.add_argument("-k", dest="select", default="", help="with --check: pytest's -k expression")
    args = parser.parse_args()
    if args.check:
        return check(args.check, args.select)
    core = core_modules()
    modules = args.modules or core
    unknown = sorted(set(modules) - set(core))
    if unknown:
        print(f"not a core module: {', '.join(unknown)}; choose from {', '.join(core)}", file=sys.stderr)
        return 2
    if args.again:
        for module in modules:
            forget_tests(module)
    names = [] if args.table else [name for module in modules for name in to_test(module, args.again)]
    if names:
        # Tests that start `python -m mnistlab` would import the editable install (src/),
        # not the mutated copy: with src/ changed since, the clean run fails (a config
        # written by one version, read by the other), and a mutant never reaches them.
        env = {**os.environ, "PYTHONPATH": str(MUTANTS.parent.resolve())}
        subprocess.run([sys.executable, "-m", "mutmut", "run", *names], check=True, env=env)
    print(table(modules))
    survivors = [name for module in modules for name, status in statuses(module).items() if status == "survived"]
    if survivors:
        print("\nsurvivors (`.venv/bin/mutmut show NAME` for the diff):\n  " + "\n  ".join(survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
