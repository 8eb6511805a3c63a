"""search_spaces/*.yaml: every shipped space parses for every benchmark, and bad files
give one-line errors that name the file, the key and the fix."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("optuna", exc_type=ImportError)

import crkd  # noqa: E402
import crkd.relations  # noqa: E402
from harness import spaces  # noqa: E402

SHIPPED = sorted(p.stem for p in (Path(spaces.SPACES_DIR)).glob("*.yaml"))  # every file, whatever it is


def test_shipped_spaces_are_present():
    assert {"rkd_weights", "temperatures", "sinkhorn", "full"} <= set(SHIPPED)
    for method in crkd.relations.RELATIONS:  # a space per method that has a term to search
        if method not in ("uno", "none"):
            assert method in SHIPPED, f"search_spaces/{method}.yaml is missing"


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("benchmark", ["digits", "cifar100-80-20", "imagenet-a"])
def test_shipped_space_parses(name, benchmark):
    space = spaces.load_space(name, benchmark)
    base = crkd.apply_overrides(crkd.preset(benchmark), dict(space.fixed))
    flat = base.flat()
    assert space.params and space.description
    for p in space.params.values():
        assert p.field in flat
        dist = p.distribution()
        # the paper default is inside the range, and ranges span at least a factor 5 around it
        assert p.contains(flat[p.field]), (name, p.field, flat[p.field])
        if p.dist == "loguniform":
            assert dist.log and p.high / p.low >= 25
    point, why = space.default_point(base)
    assert point is not None, why
    cfg = space.config(base, point)
    assert cfg.flat() == base.flat()  # the first trial is exactly the preset


# What each method's space searches (beside the shared checks of test_shipped_space_parses).
METHOD_FIELDS = {
    "crkd": {"discover.beta", "relation.t"}, "crkd-code": {"discover.beta", "relation.t"},
    "crcd": {"discover.beta", "relation.tau", "relation.anchors"},
    "refilled": {"discover.beta", "relation.tau1", "relation.margin", "relation.tau2"},
    "rkd": {"discover.beta"}, "sp": {"discover.beta"}, "pkt": {"discover.beta"},
}


@pytest.mark.parametrize("name", sorted(METHOD_FIELDS))
def test_method_space(name):
    space = spaces.load_space(name, "digits")
    assert dict(space.fixed) == {"discover.relation": name}
    assert METHOD_FIELDS[name] <= set(space.fields.values()) and len(space.params) <= 5


def test_space_contents():
    fields = lambda n: set(spaces.load_space(n, "digits").fields.values())  # noqa: E731
    assert fields("rkd_weights") == {"discover.alpha", "discover.beta"}
    assert fields("temperatures") == {"relation.t", "discover.tau"}
    assert fields("sinkhorn") == {"discover.sk_epsilon", "discover.sk_iters"}
    assert fields("full") == fields("rkd_weights") | fields("temperatures") | fields("sinkhorn")
    sk = spaces.load_space("sinkhorn", "digits").params
    assert sk["sk_iters"].dist == "int" and sk["sk_epsilon"].dist == "loguniform"


def test_trial_config_applies_sampled_values():
    base = crkd.preset("digits")
    cfg = spaces.trial_config(base.to_yaml(), {"beta": "discover.beta", "it": "discover.sk_iters"},
                              {"beta": 0.25, "it": 7})
    assert cfg.discover.beta == 0.25 and cfg.discover.sk_iters == 7
    assert math.isclose(cfg.discover.alpha, base.discover.alpha)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "my_space.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_user_yaml_path_and_fixed(tmp_path):
    path = write(tmp_path, """
        description: mine
        params:
          beta: {field: discover.beta, dist: uniform, low: 0.0, high: 1e-1}
          relation: {field: discover.relation, dist: choice, values: [crkd, none]}
        fixed: {relation.form: ce, discover.lr: 5e-2}
        """)
    s = spaces.load_space(path, "digits")
    assert s.params["beta"].high == 0.1                       # 1e-1 is a string to YAML 1.1
    assert s.fixed == {"relation.form": "ce", "discover.lr": 0.05}
    assert s.default_point(crkd.preset("digits"))[0] == {"beta": 0.1, "relation": "crkd"}


BAD = [
    # (file body, words the one-line message must contain)
    ("params:\n  beta: {field: discover.bta, dist: loguniform, low: 0.01, high: 1}\n",
     ["params.beta.field", "discover.bta", "did you mean 'discover.beta'"]),
    ("params:\n  beta: {field: discover.beta, dist: logunifrom, low: 0.01, high: 1}\n",
     ["params.beta.dist", "did you mean 'loguniform'"]),
    ("params:\n  beta: {field: discover.beta, dist: loguniform, low: 1, high: 0.1}\n",
     ["params.beta", "low (1.0) must be below high (0.1)"]),
    ("params:\n  beta: {field: discover.beta, dist: loguniform, low: 0, high: 1}\n",
     ["params.beta.low", "loguniform needs low > 0"]),
    ("params:\n  tau: {field: discover.tau, dist: uniform, low: 0, high: 1}\n",
     ["params.tau.low", "trainer rejects discover.tau=0.0", "must be > 0", "change the bound"]),
    ("params:\n  it: {field: discover.sk_iters, dist: uniform, low: 1, high: 5}\n",
     ["params.it.dist", "integer; use dist: int"]),
    ("params:\n  a: {field: discover.alpha, dist: int, low: 1, high: 5}\n",
     ["params.a.dist", "float; use uniform or loguniform"]),
    ("params:\n  beta: {field: discover.beta, dist: loguniform, low: 0.01, hihg: 1}\n",
     ["params.beta.hihg", "did you mean 'high'"]),
    ("params:\n  beta: {field: discover.beta, dist: uniform, low: 0.01, high: 1, setp: 0.1}\n",
     ["params.beta.setp", "did you mean 'step'"]),
    ("parms:\n  beta: {field: discover.beta, dist: uniform, low: 0.01, high: 1}\n",
     ["parms", "did you mean 'params'"]),
    ("params:\n  e: {field: discover.epochs, dist: int, low: 1, high: 5}\n",
     ["params.e.field", "--max-epochs"]),
    ("params:\n  r: {field: discover.relation, dist: choice, values: [crkd, nope]}\n",
     ["params.r.values", "trainer rejects discover.relation='nope'", "choices"]),
    ("params:\n  b: {field: discover.beta, dist: uniform, low: 0.1, high: 1}\nfixed: {discover.beta: 0.2}\n",
     ["params.b", "also under fixed"]),
    ("params:\n  b: {field: discover.beta, dist: uniform, low: 0.1, high: 1}\nfixed: {relation.frm: ce}\n",
     ["fixed.relation.frm", "did you mean 'relation.form'"]),
    ("params:\n  b: {field: discover.beta, dist: uniform, low: 0.1, high: 1\n",
     ["not valid YAML", "line"]),
    ("params: {}\n", ["params", "at least one parameter"]),
]


@pytest.mark.parametrize("body,words", BAD, ids=[w[0] for _, w in BAD])
def test_bad_space_one_line_error(tmp_path, body, words):
    path = write(tmp_path, body)
    with pytest.raises(spaces.SpaceError) as e:
        spaces.load_space(path, "digits")
    msg = str(e.value)
    assert "\n" not in msg
    assert "my_space.yaml" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_unknown_space_name():
    with pytest.raises(spaces.SpaceError, match="did you mean 'sinkhorn'"):
        spaces.resolve_path("sinkhorm")
    with pytest.raises(spaces.SpaceError, match="no such file"):
        spaces.resolve_path("nowhere/space.yaml")


def test_parse_sets_reads_numbers():
    sets = spaces.parse_sets(["discover.lr=1e-2", "model.widths=[8,16,16]", "relation.form=ce"], "digits")
    assert sets == {"discover.lr": 0.01, "model.widths": [8, 16, 16], "relation.form": "ce"}
    with pytest.raises(crkd.ConfigError, match="did you mean 'discover.beta'"):
        spaces.parse_sets(["discover.bta=0.1"], "digits")
