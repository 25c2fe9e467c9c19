"""Property test through the CLI itself: random config files and random --set values never let a
traceback escape; the answer is either a config (exit 0) or one line on stderr with exit status 2."""

from __future__ import annotations

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli.cli import cli
from cnncli.config import OPTIONS

_keys = st.sampled_from([o.key for o in OPTIONS] + ["optim.lrr", "train", "data.train.x", "bogus", "train.early"])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                     st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3))
_set_values = st.one_of(
    st.builds(lambda k, v: f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}",
              _keys, _scalars),
    st.text(max_size=30),
)
_config_text = st.one_of(
    st.text(max_size=60),
    st.dictionaries(st.sampled_from(["data", "model", "optim", "train", "out", "extra"]),
                    st.one_of(_scalars, st.dictionaries(st.text(max_size=8), _scalars, max_size=3)),
                    max_size=4).map(lambda d: yaml.safe_dump(d)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_config_text, sets=st.lists(_set_values, max_size=3))
def test_no_traceback_escapes(tmp_path, text, sets):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text, encoding="utf-8")
    args = ["train", "--config", str(cfg), "--print-config"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert res.exit_code in (0, 2), res.output
    if res.exit_code == 2:
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
