"""Config: presets valid, YAML round trip, overrides, one-line errors for bad values."""
import pytest

from crkd import ConfigError, apply_overrides, load_config, preset, stage1_key, validate
from crkd.config import PRESETS, Config


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate_and_round_trip(name):
    cfg = validate(preset(name))
    again = Config.from_yaml(cfg.to_yaml())
    assert again == cfg


@pytest.mark.parametrize("name", list(PRESETS))
def test_yaml_text_is_pure_pythons(name):
    """The C dumper/loader (libyaml) write and read what PyYAML's own safe_dump/safe_load do:
    saved configs, run-cache keys and exports do not depend on which one a machine has."""
    import yaml
    from crkd.relations import RELATIONS
    for relation in RELATIONS:
        cfg = validate(apply_overrides(preset(name), {"discover.relation": relation, "discover.alpha": 0.1 / 3}))
        text = cfg.to_yaml()
        assert text == yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        assert Config.from_yaml(text).to_dict() == yaml.safe_load(text)


def test_method_defaults():
    d = Config().discover
    assert (d.alpha, d.beta, d.tau, d.sk_epsilon, d.sk_iters, d.relation) == (1.0, 0.1, 0.1, 0.05, 3, "crkd")
    r = Config().relation
    assert (r.t, r.eta_at, r.form, r.weight_norm, r.detach_weight) == (4.0, "tau", "kl", "sample", False)
    assert (d.lr, d.momentum, d.weight_decay, d.batch_size, d.epochs, d.warmup) == (0.4, 0.9, 1.5e-4, 512, 500, 10)
    p = Config().pretrain
    assert (p.lr, p.weight_decay, p.batch_size, p.epochs) == (0.1, 1e-4, 256, 200)
    assert preset("cifar100-80-20").aug.mean == [0.507, 0.487, 0.441]
    assert preset("cifar10-5-5").aug.std == [0.202, 0.199, 0.201]


def test_overrides_parse_types():
    cfg = apply_overrides(preset("digits"), ["discover.beta=0.2", "model.widths=[8, 16]", "discover.relation=none",
                                              "discover.sk_iters=5"])
    assert cfg.discover.beta == 0.2 and cfg.model.widths == [8, 16] and cfg.discover.relation == "none"
    assert cfg.discover.sk_iters == 5
    cfg = apply_overrides(cfg, ["relation.detach_weight=true", "discover.relation=crkd"])  # the term first
    assert cfg.relation.detach_weight is True
    cfg = apply_overrides(cfg, {"discover.tau": 1})
    assert isinstance(cfg.discover.tau, float)


@pytest.mark.parametrize("override,needle", [
    ("discover.tau=0", "discover.tau must be > 0"),
    ("relation.t=-1", "relation.t must be > 0"),
    ("discover.t=2", "unknown key 'discover.t'; it is now 'relation.t'"),
    ("relation.form=mse", "relation.form must be one of kl, ce"),
    ("discover.sk_epsilon=0", "discover.sk_epsilon must be > 0"),
    ("discover.beta=-0.1", "discover.beta must be >= 0"),
    ("discover.alpha=-1", "discover.alpha must be >= 0"),
    ("discover.btea=0.1", "unknown key 'discover.btea'"),
    ("discover.beta=abc", "must be a number"),
    ("discover.relation=foo", "discover.relation 'foo' is unknown"),
    ("model.arch=vgg", "model.arch 'vgg' is unknown"),
    ("discover.sk_iters=0", "discover.sk_iters must be >= 1"),
    ("aug.jitter_p=2", "probability"),
    ("beta", "needs the form"),
])
def test_bad_values_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(benchmark="digits", overrides=[override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_benchmark():
    with pytest.raises(ConfigError, match="unknown benchmark 'cifar11'"):
        preset("cifar11")


def test_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: {benchmark: digits}\ndiscover: {beta: 0.3}\n")
    assert load_config(str(f)).discover.beta == 0.3
    f.write_text("discover: {betta: 0.3}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'discover.betta'"):
        load_config(str(f))


def test_stage1_key_ignores_stage2():
    a, b = preset("digits"), apply_overrides(preset("digits"), ["discover.beta=0.5", "model.num_heads=2"])
    assert stage1_key(a) == stage1_key(b)
    assert stage1_key(a) != stage1_key(apply_overrides(preset("digits"), ["pretrain.epochs=3"]))
    assert stage1_key(a) != stage1_key(apply_overrides(preset("digits"), ["seed=1"]))
