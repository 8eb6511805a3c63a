"""The tiny digits recipe the trainer's tests share: a model small enough that a two-stage
run takes seconds on one thread."""

MODEL = ["model.widths=[8,16,16]", "model.hidden_dim=32", "model.proj_dim=16",
         "discover.batch_size=128", "pretrain.batch_size=128"]


def fast(discover_epochs: int = 4) -> list[str]:
    """Overrides for a 2 + `discover_epochs` epoch run of the tiny model."""
    return ["pretrain.epochs=2", f"discover.epochs={discover_epochs}", *MODEL]
