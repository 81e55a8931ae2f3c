"""Values of the wrong type in a training configuration: one-line UserErrors, no tracebacks."""

import pytest

from rnnlab.cli.main import main
from rnnlab.errors import UserError
from rnnlab.training.config import TrainConfig, load_config, preset_names

WRONG = [
    (
        "[model]\nhidden_size = 8.7\n",
        "[model] hidden_size must be an integer; got 8.7 (float)",
    ),
    (
        '[model]\nhidden_size = "big"\n',
        "[model] hidden_size must be an integer; got 'big' (string)",
    ),
    (
        "[model]\nnum_layers = true\n",
        "[model] num_layers must be an integer; got true (boolean)",
    ),
    ('[optim]\nlr = "0.1"\n', "[optim] lr must be a number; got '0.1' (string)"),
    ("[optim]\nlr = true\n", "[optim] lr must be a number; got true (boolean)"),
    ("[optim]\nlr = nan\n", "[optim] lr must be a number, not nan"),
    ("[optim]\nnesterov = 1\n", "[optim] nesterov must be true or false; got 1 (integer)"),
    (
        '[optim]\nmax_time = "10"\n',
        "[optim] max_time must be a number or none; got '10' (string)",
    ),
    ("[data]\npath = 3\n", "[data] path must be a string or none; got 3 (integer)"),
    ('[model]\ncell = ["lstm"]\n', "[model] cell must be a string; got ['lstm'] (array)"),
    ("[teacher]\nk = {a = 1}\n", "[teacher] k must be a number or none; got {'a': 1} (table)"),
    (
        "[schedule]\nwarmup = 1979-05-27\n",
        "[schedule] warmup must be an integer; got 1979-05-27 (date)",
    ),
    ('[output]\nprogress = "no"\n', "[output] progress must be true or false; got 'no' (string)"),
    # Infinities are refused as the flags refuse them (max_time = inf crashed the trainer).
    ("[optim]\nmax_time = inf\n", "[optim] max_time must be a number or none, not inf"),
    ("[optim]\nlr = inf\n", "[optim] lr must be a number, not inf"),
    ("[model]\ndropout = -inf\n", "[model] dropout must be a number, not -inf"),
    ("[teacher]\nk = inf\n", "[teacher] k must be a number or none, not inf"),
]


@pytest.mark.parametrize("text, message", WRONG)
def test_wrong_types_in_a_toml_file(tmp_path, text, message):
    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_config(str(path))
    assert str(info.value) == f"invalid configuration: {message}"


@pytest.mark.parametrize("text, message", WRONG[:4])
def test_the_command_line_prints_one_line_and_exits_2(tmp_path, capsys, text, message):
    path = tmp_path / "x.toml"
    path.write_text(text)
    argv = ["train", "--config", str(path), "--max-steps", "1", "--hidden", "8", "--layers", "1"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--no-progress", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"rnnlab: error: invalid configuration: {message}\n"
    assert not (tmp_path / "run").exists()


def test_range_checks_still_run_after_the_type_checks(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[model]\ndropout = 1.5\n")
    with pytest.raises(UserError, match=r"^invalid configuration: dropout must be in \[0, 1\)"):
        load_config(str(path))
    path.write_text('[optim]\noptimizer = "adam"\nnesterov = true\n')
    with pytest.raises(UserError, match="^invalid configuration: nesterov needs the sgd"):
        load_config(str(path))


def test_ints_are_taken_for_floats(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(
        "[model]\ndropout = 0\n[optim]\nlr = 1\nmax_time = 5\nclip = 2\n"
        "[schedule]\ngamma = 1\n[teacher]\nk = 2\n"
    )
    config = load_config(str(path))
    assert config.model.dropout == 0.0 and type(config.model.dropout) is float
    assert config.optim.lr == 1.0 and type(config.optim.lr) is float
    assert config.optim.max_time == 5.0 and type(config.optim.max_time) is float
    assert type(config.optim.clip) is float and type(config.schedule.gamma) is float
    assert config.teacher.k == 2.0 and type(config.teacher.k) is float
    assert config.optim.max_steps is None and config.data.path is None  # defaults kept


def test_valid_files_presets_and_flags_load(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(
        '[data]\npath = "t.txt"\ntokens = "word"\nval_fraction = 0.2\n'
        '[model]\ncell = "gru"\nhidden_size = 24\nhidden_recurrence = false\n'
        '[optim]\noptimizer = "sgd"\nmomentum = 0.9\nnesterov = true\nmax_steps = 7\n'
        '[output]\nout = "runs/x"\nprogress = false\nseed = -3\n'
    )
    config = load_config(str(path), {"optim": {"lr": 0.05, "max_time": None}})
    assert config.data.path == "t.txt" and config.model.hidden_size == 24
    assert config.optim.nesterov is True and config.optim.max_steps == 7
    assert config.optim.lr == 0.05 and config.optim.max_time is None
    assert config.output.progress is False and config.output.seed == -3
    assert preset_names()
    for name in preset_names():
        assert isinstance(load_config(name), TrainConfig)


def test_overrides_and_updates_are_checked_too():
    with pytest.raises(UserError) as info:
        load_config(None, {"optim": {"batch_size": "64"}})
    assert str(info.value) == (
        "invalid configuration: [optim] batch_size must be an integer; got '64' (string)"
    )
    with pytest.raises(UserError, match=r"\[output\] seed must be an integer; got 1\.5"):
        TrainConfig().updated({"output": {"seed": 1.5}})
    assert TrainConfig().updated({"optim": {"max_steps": 3}}).optim.max_steps == 3


def test_a_saved_configuration_is_checked():
    saved = TrainConfig().to_json()
    assert TrainConfig.from_json(saved) == TrainConfig()
    saved["optim"]["lr"] = 1  # JSON may hold an int for a float
    assert TrainConfig.from_json(saved).optim.lr == 1.0
    saved["optim"]["max_time"] = None
    saved["optim"]["max_steps"] = 10
    assert TrainConfig.from_json(saved).optim.max_time is None
    saved["example"] = {"anything": 1}  # other keys at the top are ignored, as before
    assert TrainConfig.from_json(saved).optim.max_steps == 10
    saved["model"]["hidden_size"] = "256"
    with pytest.raises(UserError) as info:
        TrainConfig.from_json(saved)
    assert str(info.value) == (
        "invalid configuration: [model] hidden_size must be an integer; got '256' (string)"
    )
    saved["model"] = [1]
    with pytest.raises(UserError, match=r"\[model\] in the saved configuration must be a table"):
        TrainConfig.from_json(saved)
    saved["model"] = {"hidden_size": 8}  # vocab_size missing
    with pytest.raises(UserError, match="^invalid configuration: .*vocab_size"):
        TrainConfig.from_json(saved)
    saved["model"] = {"vocab_size": 0, "colour": "red"}
    with pytest.raises(UserError, match="unknown setting 'colour' in \\[model\\]"):
        TrainConfig.from_json(saved)
    with pytest.raises(UserError, match="^invalid configuration: expected a table"):
        TrainConfig.from_json([1, 2])


def test_a_directory_given_as_the_config_file(tmp_path):
    with pytest.raises(UserError, match="^cannot read config file"):
        load_config(str(tmp_path))


def test_long_values_in_messages_stay_on_one_line(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(f'[model]\ncell = "{"x" * 200}\\nmore"\n')
    with pytest.raises(UserError) as info:
        load_config(str(path))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("invalid configuration: cell must be one of")
    path.write_text(f'[model]\nhidden_size = "{"x" * 200}\\nmore"\n')
    with pytest.raises(UserError) as info:
        load_config(str(path))
    assert "\n" not in str(info.value) and len(str(info.value)) < 150
    assert str(info.value).endswith("... (string)")


def test_numbers_too_large(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[optim]\nlr = 1" + "0" * 400 + "\n")  # no float holds it
    with pytest.raises(UserError, match=r"^invalid configuration: \[optim\] lr must be a number"):
        load_config(str(path))
    path.write_text("[model]\nhidden_size = 1" + "0" * 5000 + "\n")  # beyond int parsing
    with pytest.raises(UserError, match="^cannot parse config file"):
        load_config(str(path))


def test_an_infinite_time_budget_is_refused_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "x.toml"
    path.write_text("[optim]\nmax_time = inf\n")
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(path), "--no-progress", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "rnnlab: error: invalid configuration: [optim] max_time must be a number or none, not inf\n"
    )
    assert not (tmp_path / "run").exists()


def test_seeds_beyond_64_bits_and_an_empty_out_are_refused(tmp_path):
    path = tmp_path / "x.toml"
    for seed in (-(2**63), 2**63 - 1):
        path.write_text(f"[output]\nseed = {seed}\n")
        assert load_config(str(path)).output.seed == seed
    path.write_text("[output]\nseed = 99999999999999999999\n")
    with pytest.raises(UserError) as info:
        load_config(str(path))
    assert str(info.value) == (
        "invalid configuration: seed must be an integer from -2**63 to 2**63 - 1; "
        "got 99999999999999999999"
    )
    path.write_text('[output]\nout = ""\n')
    with pytest.raises(UserError, match="^invalid configuration: out must name the run directory"):
        load_config(str(path))
