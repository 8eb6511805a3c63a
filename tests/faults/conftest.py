"""The `scenario` fixture: one fault scenario's folder, processes and servers (all ended by
session id when it ends, whatever happened), and its row of the table
(benchmarks/faults.py), recorded even when the test fails."""
from __future__ import annotations

import importlib.util
import time

import pytest

from . import counting, support

_spec = importlib.util.spec_from_file_location("crkd_faults_table", support.REPO / "benchmarks" / "faults.py")
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)
RAN: list[str] = []  # the scenarios of this session


class Scenario:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.start = time.time()
        self.order, self.title = 99, ""
        self.procs: list[support.Proc] = []
        self.servers: list = []
        self.exit_codes: list[int] = []
        self.notes: list[str] = []
        self.counts: dict | None = None
        self.running_after_stops = 0

    def begin(self, order: int, title: str) -> "Scenario":
        self.order, self.title = order, title
        return self

    # --- processes --------------------------------------------------------------------------

    def spawn(self, cmd: list[str], name: str, env: dict | None = None) -> support.Proc:
        p = support.Proc(cmd, self.tmp / f"{len(self.procs):02d}-{name}.log", env or support.env(), self.tmp, name)
        self.procs.append(p)
        return p

    def ended(self, p: support.Proc, timeout: float) -> int:
        rc = p.wait(timeout)
        self.exit_codes.append(rc)
        return rc

    def run(self, cmd: list[str], name: str, timeout: float, env: dict | None = None) -> support.Proc:
        p = self.spawn(cmd, name, env)
        self.ended(p, timeout)
        return p

    def settle(self, p: support.Proc, timeout: float = 20) -> None:
        """After a driver ended: the processes it started end too (Ray's follow their driver);
        any still alive after `timeout` are killed and noted."""
        deadline = time.time() + timeout
        while p.leftovers() and time.time() < deadline:
            time.sleep(0.2)
        left = p.leftovers()
        if left:
            names = []
            for pid in left:
                try:
                    names.append(open(f"/proc/{pid}/cmdline").read().split("\0")[0].rsplit("/", 1)[-1][:40])
                except OSError:
                    pass
            self.notes.append(f"{len(left)} process(es) of {p.name}'s session still alive {timeout:.0f} s after "
                              f"it ended ({', '.join(sorted(set(names)))}): killed by the test")
            p.kill()

    def server(self, s):
        self.servers.append(s)
        return s

    # --- the counted columns --------------------------------------------------------------------

    def stopped(self, tracking_uri: str, name: str) -> list[str]:
        """Just after a driver stopped gracefully: the runs it left RUNNING (counted)."""
        running = counting.running_runs(tracking_uri, name)
        self.running_after_stops += len(running)
        if running:
            self.notes.append(f"RUNNING after the stop: {', '.join(running)}")
        return running

    def count(self, tracking_uri: str, name: str, folder: str, optuna_journal: str | None, n_trials: int) -> dict:
        counts = counting.count(tracking_uri, name, folder, optuna_journal, n_trials, self.running_after_stops)
        if counts.get("deleted_runs"):
            self.notes.append(f"{name}: runs deleted at --resume (started after Tune's last snapshot, done again): "
                              + ", ".join(counts["deleted_runs"]))
        self.counts = counts
        return counts

    def assert_zeros(self) -> None:
        assert self.counts is not None, "not counted"
        nonzero = {k: self.counts[k] for k in counting.COLUMNS if self.counts[k]}
        assert not nonzero, f"{nonzero}: " + "; ".join(self.counts["problems"])

    # --- the end ---------------------------------------------------------------------------------

    def close(self) -> None:
        for p in self.procs:
            if p.alive() or p.leftovers():
                p.close()
        for s in reversed(self.servers):
            try:
                s.close()
            except Exception as e:  # a server that fails to stop must not hide the test's result
                self.notes.append(f"closing {type(s).__name__}: {e}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def scenario(request, tmp_path):
    s = Scenario(tmp_path)
    try:
        yield s
    finally:
        s.close()
        rep = getattr(request.node, "rep_call", None)
        result = "passed" if rep is not None and rep.passed else "FAILED" if rep is not None else "error"
        row = {"scenario": request.node.name, "order": s.order, "title": s.title or request.node.name,
               "result": result, "exit_codes": s.exit_codes, "seconds": round(time.time() - s.start, 1),
               "counts": s.counts, "notes": s.notes, "folder": str(tmp_path),
               "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        table.save(row)
        RAN.append(request.node.name)


def pytest_terminal_summary(terminalreporter):
    rows = table.load()
    if RAN and rows:
        terminalreporter.write_sep("-", f"fault table ({table.out_dir() / 'faults.md'})")
        terminalreporter.write_line(table.markdown(rows))
