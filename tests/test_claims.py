"""The lesson's claims hold on the embedded data at the shipped defaults (README states the figures).

A golden-result test in torchtune's sense: if a change to the generator, the model or the loop
makes word order stop mattering, or a vanilla RNN stop fading over long ranges, this fails.
"""

from __future__ import annotations

import pytest

from rnnsweep import config, run


def test_acc(compose_cfg, tmp_path, overrides):
    cfg = compose_cfg(["logger=none", "runtime.progress=off", *overrides])
    record = run.train(config.validate(cfg), None, tmp_path / "_".join(overrides))
    assert record["status"] == "completed"
    return record["metrics"]["test/acc"]


test_acc.__test__ = False  # a helper, not a test


@pytest.mark.slow
def test_word_order_matters_a_bag_of_embeddings_cannot_solve_the_order_variant(compose_cfg, tmp_path):
    bow = test_acc(compose_cfg, tmp_path, ["model=bow"])
    lstm = test_acc(compose_cfg, tmp_path, ["model=lstm"])
    assert lstm > 0.95
    assert bow < lstm - 0.2


@pytest.mark.slow
def test_vanilla_rnn_forgets_over_long_ranges_where_lstm_remembers(compose_cfg, tmp_path):
    rnn = test_acc(compose_cfg, tmp_path, ["model=rnn", "data.variant=long_range"])
    lstm = test_acc(compose_cfg, tmp_path, ["model=lstm", "data.variant=long_range"])
    assert lstm > 0.9
    assert rnn < lstm - 0.15
