"""Every shipped option composes, validates and trains; bad values fail by name, before training."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from conftest import TINY, group_options
from datafiles import write_ag_news, write_jsonl
from rnnsweep import config, run

# Options that select a Hydra plugin, and the plugin's module.
PLUGINS = {
    ("launcher", "parallel"): "hydra_plugins.hydra_joblib_launcher",
    ("launcher", "submitit_local"): "hydra_plugins.hydra_submitit_launcher",
    ("launcher", "slurm"): "hydra_plugins.hydra_submitit_launcher",
    ("launcher", "ray"): "hydra_plugins.hydra_ray_launcher",
    ("search", "optuna"): "hydra_plugins.hydra_optuna_sweeper",
}


def data_files(option: str, directory) -> list[str]:
    """Overrides that point a file-based data option at small files of its format."""
    if option == "ag_news":
        return [f"data.root={write_ag_news(directory)}", "data.download=false"]
    directory.mkdir(parents=True)
    write_jsonl(directory / "train.jsonl", 300, seed=0)
    write_jsonl(directory / "test.jsonl", 60, seed=1)
    if option == "csv":
        return [f"data.train={directory / 'train.jsonl'}", f"data.test={directory / 'test.jsonl'}"]
    if option == "hf":
        pytest.importorskip("datasets")
        return [f"data.dataset={directory}"]
    raise AssertionError(f"no fixture for data={option}")


@pytest.mark.parametrize("group,option", group_options(), ids=lambda v: str(v))
def test_every_option_composes_validates_and_trains_a_step(compose_cfg, tmp_path, group, option):
    plugin = PLUGINS.get((group, option))
    if plugin and importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{group}={option} needs the Hydra plugin {plugin} (ray: make test-ray)")
    overrides = [f"{group}={option}", *TINY]
    if group == "data" and option != "synthetic":
        overrides = [o for o in overrides if not o.startswith(("data.train_size", "data.test_size"))]
        overrides += data_files(option, tmp_path / "data")
    if group == "tokenizer" and option != "basic_english":
        pytest.importorskip("tokenizers")
    cfg = compose_cfg(overrides)
    settings = config.validate(cfg)
    record = run.train(settings, None, tmp_path)
    assert record["status"] == "completed", record["error"]
    assert record["metrics"]["steps"] >= 1
    assert (tmp_path / "metrics.json").is_file()


def schemas() -> list[type]:
    found, todo = [], [config.RootConfig, *config.OPTIMIZERS.values(), *config.DATA_SOURCES.values()]
    while todo:
        schema = todo.pop()
        if schema in found:
            continue
        found.append(schema)
        todo += [f.type for f in dataclasses.fields(schema) if dataclasses.is_dataclass(f.type)]
    return found


def test_values_live_in_conf_only_so_python_and_the_command_line_cannot_disagree(compose_cfg):
    """No schema field has a value of its own: a Python caller composes conf/ as the CLI does."""
    for schema in schemas():
        for f in dataclasses.fields(schema):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f"{schema.__name__}.{f.name}"
    # ...and conf/ gives every key a value for every option (a missing one fails validation by name).
    for group, option in group_options():
        if group in ("launcher", "search", "experiment", "lesson") or (group == "data" and option in ("csv", "hf")):
            continue
        config.validate(compose_cfg([f"{group}={option}"]))


def test_a_missing_value_is_an_error_naming_the_key(compose_cfg):
    with pytest.raises(config.ConfigError, match=r"data.train: required, no default; set it on the command line"):
        config.validate(compose_cfg(["data=csv"]))


def test_attention_pooling_trains_from_the_command_line_options(compose_cfg, tmp_path):
    settings = config.validate(compose_cfg([*TINY, "model=lstm", "model.pooling=attention", "topology=bi"]))
    record = run.train(settings, None, tmp_path)
    assert record["status"] == "completed", record["error"]
    assert record["config"]["model"]["pooling"] == "attention"


def test_defaults_are_the_correct_model_not_the_lessons(compose_cfg):
    s = config.validate(compose_cfg([]))
    assert s.model.pooling is config.Pooling.last
    assert s.model.arch is config.Arch.lstm
    assert s.data.name == "synthetic"


def test_seed_notebook_reproduces_the_lesson_settings(compose_cfg):
    by_lesson = {
        lesson: config.validate(compose_cfg(["experiment=seed_notebook", f"lesson={lesson}"]))
        for lesson in ("rnn", "lstm", "packed_lstm")
    }
    for s in by_lesson.values():
        assert (s.model.embed_dim, s.model.hidden_dim) == (64, 32)
        assert (s.train.batch_size, s.train.epochs, s.train.grad_clip) == (16, 1, None)
        assert s.optimizer.name is config.OptimizerName.adam and s.optimizer.lr == 0.001
        assert s.topology.num_layers == 1 and not s.topology.bidirectional
    rnn, lstm, packed = by_lesson["rnn"], by_lesson["lstm"], by_lesson["packed_lstm"]
    assert (rnn.model.arch, rnn.model.pooling, rnn.batching.mode.value) == (config.Arch.rnn, config.Pooling.seed_mean, "padded")
    assert (lstm.model.arch, lstm.model.pooling, lstm.batching.mode.value) == (config.Arch.lstm, config.Pooling.seed_hlast, "padded")
    assert (packed.model.arch, packed.model.pooling, packed.batching.mode.value) == (config.Arch.lstm, config.Pooling.seed_hlast, "packed")
    assert lstm.model.embed_init is config.EmbedInit.shifted_normal


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["topology.num_layers=0"], "topology.num_layers=0: must be at least 1"),
        (["train.epochs=-1"], "train.epochs=-1: must be at least 1"),
        (["topology.dropout=0.3"], "topology.dropout=0.3"),
        (["optimizer.lr=0"], "optimizer.lr=0.0: must be a positive number"),
        (["optimizer.lr=abc"], "optimizer.lr"),
        (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5"),
        (["model=bow", "topology=bi"], "model=bow has no recurrent stack"),
        (["model=bow", "batching=packed"], "batching.mode=packed"),
        (["model=bow", "model.pooling=last"], "model.pooling=last"),
        (["+model.foo=1"], "model.foo: not a key of model"),
        (["+model.hiden_dim=8"], "model.hiden_dim: not a key of model (did you mean model.hidden_dim?"),
        (["+optimizer.foo=1"], "optimizer.foo"),
        (["train.grad_clip=-1"], "train.grad_clip=-1.0"),
        (["data.val_fraction=1.0"], "data.val_fraction=1.0"),
    ],
)
def test_invalid_values_fail_validation_naming_the_key(compose_cfg, overrides, message):
    cfg = compose_cfg(overrides)
    with pytest.raises(config.ConfigError) as err:
        config.validate(cfg)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "key,hint",
    [
        ("train.batch", "did you mean train.batch_size? (train has: epochs, batch_size,"),
        ("batching.batch_size", "did you mean train.batch_size? (batching has: mode,"),
        ("topology.layers", "did you mean topology.num_layers?"),
        ("lr", "did you mean optimizer.lr? (the config has: seed, model,"),
        ("data.val_frac", "did you mean data.val_fraction? (data's keys depend on the data chosen"),
        ("optimizer.betas2", "did you mean optimizer.betas?"),
        ("model.colour", "(model has: arch, embed_dim, hidden_dim, pooling, embed_init, vectors, freeze_embedding)"),
    ],
)
def test_unknown_keys_get_the_nearest_known_keys(key, hint):
    assert config.unknown_key_hint(key).startswith(hint)


def test_a_key_near_nothing_gets_no_guess():
    assert "did you mean" not in config.unknown_key_hint("model.colour")
    assert config.unknown_key_hint("ledger.store.deeper", list_section=False) == ""


def test_log_model_needs_a_kept_model_and_wandb(compose_cfg):
    with pytest.raises(config.ConfigError, match="logger.log_model=true: uploads the model a run keeps"):
        config.validate(compose_cfg(["logger.log_model=true", "ledger.keep_model=false"]))
    with pytest.raises(config.ConfigError, match="logger.log_model=true: uploads to W&B: it needs logger=wandb"):
        config.validate(compose_cfg(["logger=none", "logger.log_model=true"]))
