"""Ray Tune harness around the crkd trainer.

`harness/tune.py` is the script (read it top to bottom); the modules here hold the
parts it needs: search-space files (`spaces`), the stage-1 teacher cache (`stage1`),
Optuna with PRUNED trials (`search`), MLflow runs and the leaderboard (`tracking`,
`mlflow_callback`), resuming after a killed driver (`restore`), local-or-URI paths
(`storage`), plots (`plots`), and the `leaderboard.py` / `export.py` commands.
Only `crkd`'s public API is used.
"""

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """Command-line misuse is one `error:` line and exit code 2 (argparse would print the usage)."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see --help)\n")
        sys.exit(2)
