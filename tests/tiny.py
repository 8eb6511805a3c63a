"""The tiny digits recipe the trainer's tests share: a model small enough that a two-stage
run takes seconds on one thread."""

MODEL = ["model.widths=[8,16,16]", "model.hidden_dim=32", "model.proj_dim=16",
         "discover.batch_size=128", "pretrain.batch_size=128"]


def fast(discover_epochs: int = 4) -> list[str]:
    """Overrides for a 2 + `discover_epochs` epoch run of the tiny model."""
    return ["pretrain.epochs=2", f"discover.epochs={discover_epochs}", *MODEL]


def untimed(m: dict) -> dict:
    """An epoch's metrics without the wall-clock ones (which differ from run to run)."""
    return {k: v for k, v in m.items() if not k.startswith("time/")}


def resumed_after(first, data, path: str, epoch: int) -> list[dict]:
    """Run discovery `first` to `epoch`, save it, disturb the global RNG (a resumed run must
    not depend on it) and continue from the file: the remaining epochs' metrics."""
    import torch

    from crkd import Discover
    for m in first:
        if m["epoch"] == epoch:
            break
    first.save(path)
    torch.manual_seed(12345)
    return list(Discover.from_checkpoint(path, data))


def cli_run(tmp_path, relation: str) -> dict:
    """`python -m crkd run` of a short digits run with `relation`; its final metrics."""
    import json

    from crkd.cli import main
    argv = ["run", "--benchmark", "digits", "--out", str(tmp_path), "--quiet", "--set", f"discover.relation={relation}",
            "--set", "pretrain.epochs=3", "--set", "discover.epochs=4"]
    assert main(argv) == 0
    return json.loads((tmp_path / "metrics.json").read_text())
