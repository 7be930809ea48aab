"""Mutation testing of kernels/ and the patching code (`make mutate`).

mutmut (pinned in mutation/requirements.txt) changes one thing at a time in the code (an
operator, a constant, an argument) and runs the tests that reach the changed function; a
mutant whose tests stay green "survived": nothing notices that change.

Steps:
1. stage  - copy the working tree (files git tracks or would track) to .mutation/precise_edit/
            (the pack's import name, so mutmut's module names match the tests') and write
            .mutation/pyproject.toml from mutation/mutmut.toml. mutmut keeps its results in
            .mutation/mutants/ and re-runs only mutants of functions that changed.
2. run    - `nice mutmut run` with a time budget (MUTATE_BUDGET seconds, default 5400); what
            finished is kept, so a second `make mutate` carries on where the first stopped.
   Before that, the named mechanism removals of mutation/removals.py are applied one at a
   time to a scratch copy; each must make its tests fail (exit status 1 otherwise).
3. report - killed / total per module; survivors not accepted in mutation/equivalent.txt are
            printed with their diff and written to .mutation/survivors.txt.

    python scripts/mutate.py [--budget S] [--jobs N] [--report-only] [--module PATH] [NAME_GLOB...]

--module nodes/pixels/patch.py mutates that one file only, in its own staging folder
(.mutation/module-<name>/, with its own results), so one module's run fits in a sitting and
does not re-run the stats of the others. Without it, every path of mutation/mutmut.toml.
--tests tests/test_a.py ... (with --module) runs only those test files.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
STAGE = PACK_DIR / ".mutation"
CONFIG = PACK_DIR / "mutation" / "mutmut.toml"
EQUIVALENT = PACK_DIR / "mutation" / "equivalent.txt"


def log(msg: str) -> None:
    print(f"[mutate] {msg}", flush=True)


# ------------------------------------------------------------------------------------ stage

def use_module(module: str | None, tests: list[str] | None = None) -> None:
    """Point the staging folder at .mutation/module-<name>/ for a one-module run; ``tests``
    (test files) replace the whole tests/ folder in that run's selection."""
    global STAGE
    if module:
        if not (PACK_DIR / module).is_file():
            sys.exit(f"--module {module}: no such file in the pack")
        STAGE = PACK_DIR / ".mutation" / ("module-" + re.sub(r"[^A-Za-z0-9]+", "_", module.removesuffix(".py")))
        os.environ["MUTATE_MODULE"] = module
        if tests:
            os.environ["MUTATE_TESTS"] = " ".join(tests)


def stage_config() -> str:
    """mutation/mutmut.toml, with source_paths narrowed to --module when one is given."""
    text = CONFIG.read_text()
    module = os.environ.get("MUTATE_MODULE")
    if module:
        text, n = re.subn(r"^source_paths = \[.*?^\]", f'source_paths = ["precise_edit/{module}"]', text,
                          count=1, flags=re.M | re.S)
        assert n == 1, "mutation/mutmut.toml: source_paths not found"
    tests = os.environ.get("MUTATE_TESTS")
    if tests:  # the stats run (every selected test, traced) is most of a one-module run's time
        listed = ", ".join(f'"precise_edit/{t}"' for t in tests.split())
        text, n = re.subn(r'^    "precise_edit/tests",$', f"    {listed},", text, count=1, flags=re.M)
        assert n == 1, "mutation/mutmut.toml: the test folder entry is not found"
    return text


def stage() -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=PACK_DIR,
                           check=True, capture_output=True).stdout.decode().split("\0")
    files = {f for f in files if f and (PACK_DIR / f).is_file()}
    dest = STAGE / "precise_edit"
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:                                   # copy only what changed: mutmut's cache
        src, dst = PACK_DIR / f, dest / f             # compares file contents, not times
        if not dst.is_file() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    for path in sorted(dest.rglob("*"), reverse=True):
        rel = path.relative_to(dest).as_posix()
        if path.is_file() and rel not in files and "__pycache__" not in rel:
            path.unlink()
    target = STAGE / "pyproject.toml"
    if not target.is_file() or target.read_text() != stage_config():
        target.write_text(stage_config())


# -------------------------------------------------------------------------------------- run

def mutmut_env() -> dict:
    env = dict(os.environ)
    env.setdefault("COMFYUI_PATH", str(PACK_DIR / ".host" / "ComfyUI"))
    # One thread per mutant process: the jobs, not torch, use the cores.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def run(budget: float, jobs: int, names: list[str]) -> bool:
    """Run mutmut for at most ``budget`` seconds; False when stopped by the budget."""
    cmd = ["nice", "-n", "10", sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs),
           *names]
    shown = cmd if len(names) <= 5 else cmd[:-len(names)] + [f"<{len(names)} mutant names>"]
    log(f"$ {' '.join(shown)}  (budget {budget:.0f} s)")
    proc = subprocess.Popen(cmd, cwd=STAGE, env=mutmut_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + budget
    last, shown_at = "", 0.0
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    while proc.poll() is None:
        if time.monotonic() > deadline:
            log("time budget spent: stopping mutmut (finished mutants are kept; run again to go on)")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            return False
        if sel.select(timeout=5):
            chunk = os.read(proc.stdout.fileno(), 65536)
            buf = (buf + chunk)[-4096:]
            # mutmut redraws a progress line with \r; print one every so often, not each redraw
            text = buf.decode(errors="replace").replace("\r", "\n").strip().splitlines()
            if text and text[-1] != last and time.monotonic() - shown_at >= 30:
                last, shown_at = text[-1], time.monotonic()
                print("  " + last.strip(), flush=True)
    tail = buf.decode(errors="replace").replace("\r", "\n").strip().splitlines()[-3:]
    for line in tail:
        print("  " + line.strip(), flush=True)
    if proc.returncode not in (0, None):
        log(f"mutmut exited with {proc.returncode}")
    return True


# --------------------------------------------------------------------------- named removals

def check_removals() -> list[str]:
    """Apply each removal of mutation/removals.py to a scratch copy and run its tests; return
    the names of the removals no test noticed."""
    import runpy

    removals = runpy.run_path(str(PACK_DIR / "mutation" / "removals.py"))["REMOVALS"]
    scratch = STAGE / "removal" / "precise_edit"
    missed = []
    for r in removals:
        if scratch.parent.exists():
            shutil.rmtree(scratch.parent)
        shutil.copytree(STAGE / "precise_edit", scratch)
        target = scratch / r["file"]
        text = target.read_text()
        if text.count(r["old"]) != 1:
            log(f"removal '{r['name']}': the line to replace is not in {r['file']} (code changed?)")
            missed.append(r["name"] + " (line not found)")
            continue
        target.write_text(text.replace(r["old"], r["new"]))
        started = time.monotonic()
        rc = subprocess.run(["nice", "-n", "10", sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                             *r["tests"]], cwd=scratch, env=mutmut_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode
        caught = rc == 1  # 1: tests failed; 0: all passed; others: could not run
        log(f"removal '{r['name']}': {'caught' if caught else f'NOT caught (pytest exit {rc})'} "
            f"({time.monotonic() - started:.0f} s)")
        if not caught:
            missed.append(r["name"])
    shutil.rmtree(scratch.parent, ignore_errors=True)
    return missed


# ----------------------------------------------------------------------------------- report

def _key_lines(diff: str) -> tuple[str, str]:
    """The changed lines of a mutant's diff, stripped: ('- old', '+ new')."""
    old = [l[1:].strip() for l in diff.splitlines() if l.startswith("-") and not l.startswith("---")]
    new = [l[1:].strip() for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
    return " / ".join(old), " / ".join(new)


def load_equivalents() -> list[dict]:
    """mutation/equivalent.txt: blocks of
        function: precise_edit.kernels.x.func       (fnmatch pattern)
        - original line                             (exact text, stripped)
        + mutated line
        why: the reason no user can see the change
    separated by blank lines; '#' lines are comments. A class of mutants may be accepted with
        match: <regex searched in "original line => mutated line">
    instead of the two lines."""
    entries, cur = [], {}
    if not EQUIVALENT.is_file():
        return entries
    for raw in EQUIVALENT.read_text().splitlines() + [""]:
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            if cur:
                entries.append(cur)
            cur = {}
        elif line.startswith("function:"):
            cur["function"] = line.split(":", 1)[1].strip()
        elif line.startswith("- "):
            cur["old"] = line[2:].strip()
        elif line.startswith("+ "):
            cur["new"] = line[2:].strip()
        elif line.startswith("match:"):
            cur["match"] = re.compile(line.split(":", 1)[1].strip())
        elif line.startswith("why:"):
            cur["why"] = line.split(":", 1)[1].strip()
    bad = [e for e in entries if not ({"function", "why"} <= e.keys() and ({"old", "new"} <= e.keys() or "match" in e))]
    if bad:
        sys.exit(f"mutation/equivalent.txt: incomplete entries {bad}")
    return entries


def function_of(mutant: str) -> str:
    """precise_edit.kernels.spot.x_fuse__mutmut_3 -> precise_edit.kernels.spot.fuse
    (methods: ...xǁClassǁmethod__mutmut_3 -> ...Class.method)."""
    module, _, name = mutant.rpartition(".")
    name = re.sub(r"__mutmut_\d+$", "", name)
    name = name[2:] if name.startswith("x_") else name.lstrip("x").strip("ǁ").replace("ǁ", ".")
    return f"{module}.{name}"


def report() -> int:
    os.chdir(STAGE)
    sys.path.insert(0, str(STAGE))
    from mutmut.__main__ import SourceFileMutationData, get_diff_for_mutant, walk_mutatable_files
    from mutmut.stats import status_by_exit_code

    equivalents = load_equivalents()
    used = set()
    rows = defaultdict(lambda: defaultdict(int))
    survivors = []
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        module = str(path).removeprefix("precise_edit/")
        for name, code in data.exit_code_by_key.items():
            status = status_by_exit_code[code]
            rows[module]["total"] += 1
            if status in ("killed", "timeout", "caught by type check", "segfault"):
                rows[module]["killed"] += 1
                continue
            if status in ("not checked", "check was interrupted by user"):
                rows[module]["not run"] += 1
                continue
            diff = get_diff_for_mutant(name, path=path)
            old, new = _key_lines(diff)
            func = function_of(name)
            match = next((i for i, e in enumerate(equivalents)
                          if fnmatch.fnmatchcase(func, e["function"])
                          and ((e.get("old"), e.get("new")) == (old, new)
                               or ("match" in e and e["match"].search(f"{old} => {new}")))), None)
            if match is not None:
                used.add(match)
                rows[module]["equivalent"] += 1
            else:
                rows[module]["survived"] += 1
                survivors.append((name, status, diff))

    def score(r):
        real = r["killed"] + r["survived"]
        return f"{100.0 * r['killed'] / real:5.1f}%" if real else "   - "

    head = f"{'module':34} {'total':>6} {'killed':>6} {'equiv':>6} {'surv':>5} {'not run':>7}  score"
    lines = [head, "-" * len(head)]
    tot = defaultdict(int)
    for module in sorted(rows):
        r = rows[module]
        for k, v in r.items():
            tot[k] += v
        lines.append(f"{module:34} {r['total']:6} {r['killed']:6} {r['equivalent']:6} "
                     f"{r['survived']:5} {r['not run']:7}  {score(r)}")
    lines.append("-" * len(head))
    lines.append(f"{'all':34} {tot['total']:6} {tot['killed']:6} {tot['equivalent']:6} "
                 f"{tot['survived']:5} {tot['not run']:7}  {score(tot)}")
    lines.append("score = killed / (killed + survived); equiv = accepted in mutation/equivalent.txt; "
                 "timeouts count as killed")
    table = "\n".join(lines)
    detail = "\n\n".join(f"# {n}: {s}\n{d.strip()}" for n, s, d in survivors)
    (STAGE / "survivors.txt").write_text(table + "\n\n" + detail + "\n")
    print(detail + ("\n\n" if detail else ""))
    print(table)
    stale = [equivalents[i] for i in range(len(equivalents)) if i not in used]
    if stale and not any(rows[m]["not run"] for m in rows) and not os.environ.get("MUTATE_MODULE"):
        log(f"{len(stale)} entries of mutation/equivalent.txt matched no mutant (code changed?):")
        for e in stale:
            print(f"  {e['function']}: {e.get('match') or (e['old'], e['new'])}")
    log(f"survivors with diffs: {STAGE / 'survivors.txt'}")
    return 0


def module_arg(args) -> list[str]:
    return (["--module", args.module] if args.module else []) + (["--tests", *args.tests] if args.tests else [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=float(os.environ.get("MUTATE_BUDGET", 5400)),
                    help="seconds mutmut may run (default 5400, or $MUTATE_BUDGET)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATE_JOBS", 2)))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--removals-only", action="store_true", help="only check mutation/removals.py")
    ap.add_argument("--recheck", action="store_true",
                    help="run the survivors of the last report again (after adding tests; mutmut keeps "
                         "earlier verdicts unless a mutant is named); with NAME_GLOBs, only those")
    ap.add_argument("--module", help="mutate this one file (path in the pack), staged on its own")
    ap.add_argument("--tests", nargs="+", metavar="TEST_FILE",
                    help="with --module: only these test files (those that reach the module) are run; "
                         "a mutant they miss counts as survived, so the score is a lower bound")
    ap.add_argument("names", nargs="*", help="mutant name globs to run (default: all)")
    args = ap.parse_args()
    if args.tests and not args.module:
        ap.error("--tests needs --module")
    use_module(args.module, args.tests)
    if args.report_only:
        return report()
    if args.removals_only:
        stage()
        return 1 if check_removals() else 0
    started = time.monotonic()
    stage()
    if args.recheck:
        subprocess.run([sys.executable, __file__, "--report-only", *module_arg(args)], cwd=PACK_DIR,
                       stdout=subprocess.DEVNULL)
        survivors = re.findall(r"^# (\S+): ", (STAGE / "survivors.txt").read_text(), flags=re.M)
        args.names = [n for n in survivors if not args.names or any(fnmatch.fnmatchcase(n, g) for g in args.names)]
        log(f"re-running {len(args.names)} survivors")
        if not args.names:
            return 0
    missed = [] if args.names or args.module else check_removals()
    run(args.budget, args.jobs, args.names)
    log(f"make mutate ran {time.monotonic() - started:.0f} s")
    # the report runs in a fresh interpreter: mutmut's state is read back from disk
    rc = subprocess.run([sys.executable, __file__, "--report-only", *module_arg(args)], cwd=PACK_DIR).returncode
    for name in missed:
        log(f"NOT CAUGHT: {name}")
    return 1 if missed else rc


if __name__ == "__main__":
    sys.exit(main())
