"""Ray Tune harness around the crkd trainer.

Commands (each reads top to bottom): `tune.py` (search, confirmation, report),
`benchmark.py` (methods over seeds), `report.py`, `leaderboard.py`, `export.py`,
`sync.py` (tracking writes a dead driver left in the journal).

Parts: `settings` (the typed study settings), `driver` and `phases` (the study's
phases), `trial` (what Tune runs), `search` (Optuna with PRUNED trials), `stage1` (the
teacher cache), `journal` / `tracking` / `recorder` (MLflow, off Tune's loop),
`console`, `spaces` (search-space files), `stats` / `reporting` / `plots` (the
verdict), `storage` (local-or-URI paths, the driver lock), `cluster`, `restore`.
Only `crkd`'s public API is used.
"""

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """Command-line misuse is one `error:` line and exit code 2 (argparse would print the
    usage). No abbreviations: `--num 3` must not silently mean `--num-samples 3`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.stderr.write(f"error: {message} (see --help)\n")
        sys.exit(2)
