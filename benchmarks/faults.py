#!/usr/bin/env python
"""The fault suite's table: per scenario, what was lost or left behind.

    python benchmarks/faults.py               # run the suite (tests/faults, minutes), then print the table
    python benchmarks/faults.py -k sigkill    # arguments after the script's own go to pytest
    python benchmarks/faults.py --table       # only print the table of the last results

Each scenario of tests/faults records a row when it ends (tests/faults/conftest.py):
exit codes of every command it ran, seconds, and the counted columns of
tests/faults/counting.py (trials lost, duplicated runs, runs left RUNNING, epochs missing,
epochs logged twice, Optuna/MLflow mismatches, other inconsistencies). Rows are kept in
OUT/faults.json (OUT: $CRKD_FAULTS_OUT, default runs-faults/), one per scenario, the latest
run of each; OUT/faults.md is the markdown table of all of them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [("trials_lost", "trials lost"), ("duplicated_runs", "duplicated runs"),
           ("runs_left_running", "runs left RUNNING"), ("epochs_missing", "epochs missing"),
           ("epochs_twice", "epochs twice"), ("optuna_mlflow_mismatches", "Optuna/MLflow mismatches"),
           ("other", "other")]


def out_dir() -> Path:
    return Path(os.environ.get("CRKD_FAULTS_OUT") or REPO / "runs-faults")


def load(folder: Path | None = None) -> list[dict]:
    path = (folder or out_dir()) / "faults.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())


def save(row: dict, folder: Path | None = None) -> list[dict]:
    """Add (or replace) one scenario's row; rewrite faults.json and faults.md."""
    folder = folder or out_dir()
    folder.mkdir(parents=True, exist_ok=True)
    rows = [r for r in load(folder) if r["scenario"] != row["scenario"]] + [row]
    rows.sort(key=lambda r: r.get("order", 99))
    (folder / "faults.json").write_text(json.dumps(rows, indent=1))
    (folder / "faults.md").write_text(markdown(rows) + "\n")
    return rows


def markdown(rows: list[dict]) -> str:
    head = ["scenario", "result", "exit codes", "seconds", *(label for _, label in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(COLUMNS)) + "|"]
    for r in rows:
        counts = r.get("counts") or {}
        cells = [r["title"], r.get("result", "?"), " → ".join(_code(c) for c in r.get("exit_codes", [])) or "-",
                 f"{r.get('seconds', 0):.0f}"]
        cells += [str(counts[k]) if k in counts else "-" for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['title']}: {n}" for r in rows for n in r.get("notes", [])]
    problems = [f"- {r['title']}: {p}" for r in rows for p in (r.get("counts") or {}).get("problems", [])]
    if notes:
        lines += ["", "Notes:", *notes]
    if problems:
        lines += ["", "Counted:", *problems]
    return "\n".join(lines)


def _code(c) -> str:
    """An exit code; a process killed by a signal (Popen's negative code) by the signal's name."""
    if isinstance(c, int) and c < 0:
        import signal
        return signal.Signals(-c).name
    return str(c)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--table"]:
        rows = load()
        print(markdown(rows) if rows else f"no results in {out_dir()}: run the suite first")
        return 0
    code = subprocess.call([sys.executable, "-m", "pytest", str(REPO / "tests" / "faults"), "-m", "faults", *argv],
                           cwd=REPO)
    rows = load()
    if rows:
        print("\n" + markdown(rows))
        print(f"\n(written to {out_dir() / 'faults.json'} and faults.md)")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
