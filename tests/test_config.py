"""Profiles: complete files that pass their checks, and bad ones that fail one line per problem."""

import copy

import pytest
import yaml
from conftest import ROOT

from sngrad import config as profiles
from sngrad import profile as profile_values
from sngrad.cli import main
from sngrad.errors import SngradError
from sngrad.layout import noise_enabled

PROFILES = ("default", "quick", "smoke", "smoke-cnn", "paper", "scale")
SCHEMA = yaml.safe_load(profiles.SCHEMA.read_text())
COMPARISON = {
    "sgd", "momentum", "adam",
    *(f"{base}+sngrad{v}" for base in ("sgd", "momentum", "adam") for v in (1, 2, 3)),
    "sgd+sngrad1@0.1", "sgd+sngrad2@0.05", "sgd+sngrad3@0.1",
    "svag", "msvag", "adabelief", "sgd+cv", "sgd+svrg",
}  # fmt: skip


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def problems(config: dict) -> list[str]:
    """The lines of the ProfileError raised for ``config`` (source "P.yaml")."""
    with pytest.raises(profiles.ProfileError) as caught:
        profiles.check_profile(config, "P.yaml")
    lines = str(caught.value).splitlines()
    assert lines == caught.value.problems
    assert all(line.startswith("P.yaml: ") for line in lines)
    return lines


def smoke(**changes) -> dict:
    """The smoke profile with ``section.key`` (dotted) or top-level keys replaced."""
    config = copy.deepcopy(profile("smoke"))
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return config


# ----------------------------------------------------------------------------- the profiles


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_is_complete_and_passes(name):
    config = profiles.load_profile(ROOT / "config" / f"{name}.yaml")
    # the one optional key: the GPU the scale profile plans for
    optional = {"accelerator"} if name == "scale" else set()
    assert set(config) == set(SCHEMA["required"]) | optional
    assert config["profile"] == name
    assert profiles.reserved_name_problem(config, name, profile("default")) is None


def test_default_profile_is_the_study_on_real_data():
    config = profile("default")
    assert config["datasets"] == ["mnist", "fashion_mnist"]
    assert {128, 1024} <= set(config["batch_sizes"])  # the seed's smallest and largest
    assert config["train"]["schedule"] == "cosine"  # the primary endpoint
    from sngrad.names import parse_run

    runs = config["optimizers"]
    primary = {r for r in runs if parse_run(r).schedule is None}
    # the 60-minute budget may cut combinations on momentum/adam, never a variant on sgd
    assert primary <= COMPARISON
    assert {r for r in COMPARISON if r.startswith("sgd")} <= primary
    # the constant-rate arm: sgd, the control variates and the three variants
    arm = {parse_run(r)._replace(schedule=None).name for r in runs if parse_run(r).schedule}
    assert arm == {"sgd", "sgd+cv", "sgd+svrg", "sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3"}
    assert len(config["train"]["seeds"]) == 20 and len(config["tune"]["seeds"]) == 2


def test_quick_and_smoke_use_embedded_data_only():
    from sngrad.data import EMBEDDED

    for name in ("quick", "smoke"):
        assert set(profile(name)["datasets"]) <= set(EMBEDDED), name
    from sngrad.names import parse_run

    runs = profile("quick")["optimizers"]
    quick = {r for r in runs if parse_run(r).schedule is None}
    # quick may cut combinations on momentum/adam to fit its time, never a variant on sgd
    assert quick <= COMPARISON
    assert {r for r in COMPARISON if r.startswith("sgd")} <= quick
    # its constant-rate arm holds sgd, the control variates and the three variants
    arm = {parse_run(r)._replace(schedule=None).name for r in runs if parse_run(r).schedule}
    assert arm == {"sgd", "sgd+cv", "sgd+svrg", "sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3"}


def test_quick_trains_two_batch_sizes():
    assert len(profile("quick")["batch_sizes"]) >= 2


def test_scale_profile_is_the_seed_network_on_one_gpu_in_about_ten_minutes():
    from sngrad import costs

    config = profile("scale")
    assert config["model"]["hidden"] == [1024, 1024, 1024]
    assert config["batch_sizes"] == [128, 1024]
    assert config["data"]["train_size"] is None  # the full training set
    assert config["accelerator"]["memory_mb"] > 0
    counted = sum(stage.flops for stage in costs.profile_stages(config))
    # extension rounds come on top of the counted work, so it plans for well under 10 minutes
    assert 3 * 60 < counted / costs.GPU_SUSTAINED_FLOPS < 8 * 60


def test_paper_profile_is_the_seed_study():
    config = profile("paper")
    assert config["datasets"] == ["mnist", "fashion_mnist", "cifar10"]
    assert config["model"]["hidden"] == [1024, 1024, 1024]
    assert config["batch_sizes"] == [128, 256, 512, 1024]
    assert config["train"]["epochs"] == 200
    assert set(config["optimizers"]) == COMPARISON


def test_schema_enums_match_the_package_registries():
    from sngrad.data import DATASETS
    from sngrad.stats import BACKENDS

    assert set(SCHEMA["$defs"]["dataset"]["enum"]) == set(DATASETS)
    assert set(SCHEMA["$defs"]["backend"]["enum"]) == set(BACKENDS)


def test_split_sizes_match_the_prepared_data():
    from sngrad.data import load_dataset

    splits = load_dataset("digits", seed=0, val_fraction=0.25)
    train, val = profile_values.split_sizes(
        {"data": {"val_fraction": 0.25, "train_size": None}}, "digits"
    )
    assert (train, val) == (len(splits.y_train), len(splits.y_val))


# ----------------------------------------------------------------------------- bad profiles


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"tune__lr_min": 0.5}, ["tune.lr_min (0.5) must be < tune.lr_max (0.3)"]),
        ({"tune__lr_bounds": [0.1, 10.0]}, ["tune.lr_bounds", "must contain"]),
        ({"tune__alpha": {"I": [10.0, 0.1], "II": [0.3, 30.0], "III": [0.03, 1.0]}},
         ["tune.alpha.I", "ordered"]),
        ({"tune__alpha": {"I": [0.0, 1.0], "II": [0.3, 30.0], "III": [0.03, 1.0]}},
         ["tune.alpha.I[0] = 0.0", "must be > 0"]),
        ({"tune__one_minus_momentum": [0.1, 1.5]}, ["tune.one_minus_momentum[1] = 1.5", "<= 1"]),
        ({"tune__seeds": [100]}, ["tune.seeds = [100]", "at least 2"]),
        ({"batch_sizes": [64, 4096]},
         ["batch_sizes = [64, 4096]", "4096 exceeds the 1294 examples of digits's training"]),
        ({"data__val_fraction": 0.999}, ["data.val_fraction = 0.999", "training split"]),
        ({"data__val_fraction": 1.0}, ["data.val_fraction = 1.0", "must be < 1"]),
        ({"data__train_size": 5000}, ["data.train_size = 5000", "at most that many"]),
        ({"data__train_size": 32}, ["batch_sizes = [64]", "data.train_size = 32"]),
        ({"optimizers": ["sgd", "adamw"]}, ["optimizers[1] = \"adamw\"", "unknown optimizer"]),
        ({"optimizers": ["sgd", "adam@0.1"]}, ["adam@0.1", "needs a +sngrad optimizer"]),
        ({"optimizers": ["sgd", "sgd+sngrad1@-1"]}, ["sgd+sngrad1@-1", "> 0"]),
        ({"optimizers": ["adam", "sgd+sngrad1"]}, ["must include 'sgd'"]),
        ({"train__checkpoint_every": -1}, ["train.checkpoint_every = -1", ">= 0"]),
        ({"train__epochs": 0}, ["train.epochs = 0", ">= 1"]),
        ({"train__schedule": "step"}, ["train.schedule = \"step\"", "constant, cosine"]),
        ({"datasets": ["imagenet"]}, ["datasets[0] = \"imagenet\"", "mnist1d"]),
        ({"optimiser": ["sgd"]}, ["unknown key optimiser; allowed:", "optimizers"]),
        ({"noise__max": 3},
         ["unknown key noise.max; allowed: batches, enabled, max_batch_size, min_batch_size, "
          "seed"]),
        ({"noise__min_batch_size": 1}, ["noise.min_batch_size = 1", ">= 2"]),
        ({"model": {"kind": "resnet", "init_seed": 0}},
         ['model.kind = "resnet"', "mlp, cnn, fmnist_2c2d"]),
        ({"model": {"kind": "cnn", "channels": [8], "kernel": 3, "dense": [], "hidden": [4],
                    "init_seed": 0}, "noise": {"enabled": False}},
         ["unknown key model.hidden; allowed: channels, dense, init_seed, kernel, kind"]),
        ({"model": {"kind": "cnn", "channels": [8], "dense": [], "init_seed": 0},
          "noise": {"enabled": False}}, ["missing key model.kernel"]),
        ({"model": {"kind": "fmnist_2c2d", "init_seed": 0}, "noise": {"enabled": False}},
         ["fmnist_2c2d needs 28x28 one-channel images; the dataset's are 8x8x1", "digits"]),
        ({"model": {"kind": "cnn", "channels": [4, 4, 4, 4], "kernel": 3, "dense": [],
                    "init_seed": 0}, "noise": {"enabled": False}},
         ["4 pooled blocks shrink a 8x8x1 image below 2x2", "fewer channels"]),
        ({"model": {"hidden": [16]}}, ["missing key model.init_seed"]),
    ],
)  # fmt: skip
def test_bad_profile_is_one_line_naming_key_value_and_what_is_allowed(changes, expected):
    (line,) = problems(smoke(**changes))
    for text in expected:
        assert text in line
    assert len(line) < 400  # never a dump of the config


def test_missing_key_is_named():
    config = smoke()
    del config["noise"]
    assert problems(config) == ["P.yaml: missing key noise (every key is required)"]


def test_checkpoint_every_zero_is_allowed():
    profiles.check_profile(smoke(train__checkpoint_every=0), "P.yaml")


def test_several_problems_give_one_line_each():
    lines = problems(smoke(train__epochs=0, batch_sizes=[0], extra=1))
    assert len(lines) == 3


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("profile: smoke\ndatasets: [digits\noptimizers: [sgd]\n")
    with pytest.raises(SngradError) as caught:
        profiles.load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3:") and "YAML syntax error" in message
    assert "line 2" in message and "\n" not in message


def test_config_check_command_prints_one_line_per_problem(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(smoke(train__epochs=0, extra=1)))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"sngrad: error: {path}: ") for line in err)
    assert main(["config", "check", str(ROOT / "config" / "smoke.yaml")]) == 0


def test_default_name_is_reserved_for_the_default_file():
    default = profile("default")
    assert profiles.reserved_name_problem(default, "x", default) is None
    changed = copy.deepcopy(default)
    changed["resources"]["threads"]["train"] = 8  # resources change no result
    assert profiles.reserved_name_problem(changed, "x", default) is None
    changed["datasets"] = ["mnist"]
    assert "reserved" in profiles.reserved_name_problem(changed, "x.yaml", default)
    assert profiles.reserved_name_problem(smoke(), "x", default) is None


# ----------------------------------------------------------------------------- job arguments


def test_training_spec_is_what_the_engine_checks():
    from sngrad.spec import TRAIN_KEYS, parse_spec

    config = profile("default")
    text = profile_values.training_spec(config)
    spec = parse_spec(text)
    assert set(yaml.safe_load(text)) == set(TRAIN_KEYS)
    assert spec.epochs == config["train"]["epochs"]
    assert list(spec.hidden) == config["model"]["hidden"]


def test_noise_batch_sizes_are_powers_of_two_within_the_training_split():
    assert profile_values.noise_batch_sizes(smoke(), "digits") == [8, 16, 32, 64]
    big = smoke(noise__max_batch_size=100000)
    assert profile_values.noise_batch_sizes(big, "digits") == [8, 16, 32, 64, 128, 256, 512, 1024]
    small = smoke(data__train_size=100)
    assert profile_values.noise_batch_sizes(small, "digits") == [8, 16, 32, 64]


def test_noise_runs_are_the_tuned_sngrad_runs_on_sgd():
    assert profile_values.noise_runs(profile("default")) == list(profile_values.NOISE_VARIANTS)
    assert profile_values.noise_runs(profile("smoke")) == ["sgd+sngrad1"]


def _same_facts(documented, actual, where="profile"):
    """Every value the document states equals the file's; ``...`` elides (skipped)."""
    if documented == "..." or (isinstance(documented, dict) and set(documented) == {"..."}):
        return
    if isinstance(documented, dict):
        for key, value in documented.items():
            assert key in actual, f"{where}.{key} is documented but not in config/default.yaml"
            _same_facts(value, actual[key], f"{where}.{key}")
    elif isinstance(documented, list) and "..." in documented:
        # the stated items in order; the ends are the file's ends unless elided
        shown = [item for item in documented if item != "..."]
        rest = iter(actual)
        assert all(item in rest for item in shown), f"{where}: {documented} vs {actual}"
        assert documented[0] == "..." or documented[0] == actual[0], where
        assert documented[-1] == "..." or documented[-1] == actual[-1], where
    else:
        assert documented == actual, f"{where}: docs say {documented!r}, the file {actual!r}"


def test_contracts_document_the_default_profile():
    text = (ROOT / "docs" / "CONTRACTS.md").read_text()
    section = text.split("## Profile (config/*.yaml)", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    documented = yaml.safe_load(block)
    default = profile("default")
    assert set(documented) == set(default)
    _same_facts(documented, default)


# ----------------------------------------------------------------------------- the noise range


def test_a_swapped_noise_range_is_refused_before_any_job():
    lines = problems(smoke(noise__min_batch_size=128, noise__max_batch_size=64))
    assert lines == ["P.yaml: noise.min_batch_size = 128 exceeds noise.max_batch_size = 64; "
                     "the noise study doubles the first up to the second, so it must be at "
                     "most that"]


def test_a_noise_batch_above_the_training_split_is_refused():
    n_train, _ = profile_values.split_sizes(profile("smoke"), "digits")
    lines = problems(smoke(noise__min_batch_size=n_train + 1,
                           noise__max_batch_size=4 * n_train))
    assert len(lines) == 1 and "noise.min_batch_size" in lines[0]
    assert f"the {n_train} examples of digits's training split" in lines[0]


def test_the_smallest_noise_batch_equal_to_the_largest_is_allowed():
    profiles.check_profile(smoke(noise__min_batch_size=32, noise__max_batch_size=32), "P.yaml")


# ----------------------------------------------------------------------------- noise.enabled

NOT_MLP = ("noise.enabled: the noise study measures MLPs only (its exact per-layer passes are "
           "written for dense layers), not a cnn model; allowed for this model: "
           "noise: {enabled: false}")


def test_a_profile_without_the_noise_study_needs_none_of_its_keys():
    profiles.check_profile(smoke(noise={"enabled": False}), "P.yaml")
    # its batch sizes are not checked: nothing of the study runs
    profiles.check_profile(smoke(noise__enabled=False, noise__min_batch_size=128,
                                 noise__max_batch_size=64), "P.yaml")
    assert not noise_enabled(smoke(noise={"enabled": False}))
    assert noise_enabled(smoke()) and noise_enabled({})


def test_a_noise_study_that_is_on_still_needs_its_keys():
    assert problems(smoke(noise={"enabled": True})) == [
        f"P.yaml: missing key noise.{key} (every key is required)"
        for key in ("seed", "min_batch_size", "max_batch_size", "batches")]
    (line,) = problems(smoke(noise__enabled="no"))
    assert line.startswith('P.yaml: noise.enabled = "no": must be of type boolean')


def test_a_noise_study_of_a_model_other_than_an_mlp_is_one_line_before_any_job():
    cnn = {"kind": "cnn", "channels": [8], "kernel": 3, "dense": [], "init_seed": 0}
    assert NOT_MLP in profiles.rule_problems(smoke(model=cnn))
    assert NOT_MLP not in profiles.rule_problems(smoke(model=cnn, noise={"enabled": False}))
    assert NOT_MLP not in profiles.rule_problems(smoke())


def test_config_check_refuses_a_modified_file_calling_itself_default(tmp_path, capsys):
    """`config check` says what the workflow would: the name belongs to config/default.yaml."""
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**profile("default"), "train": {
        **profile("default")["train"], "epochs": 3}}))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is reserved for the unmodified" in err[0]
    same = tmp_path / "copy.yaml"
    same.write_text((ROOT / "config" / "default.yaml").read_text())
    assert main(["config", "check", str(same)]) == 0  # an unchanged copy is the default
