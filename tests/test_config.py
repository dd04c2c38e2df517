import pytest

from blu.cli.parser import parse_duration
from blu.config import PRESETS, Budget, ModelConfig, TrainConfig, configs_for, from_dict, to_dict
from blu.errors import BluError


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600), ("1.5m", 90), (" 2 m ", 120)])
def test_durations(text, seconds):
    """--time takes seconds, or a number with s, m or h, spaces allowed."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "ten", "5x", "1h30m", "m"])
def test_bad_durations(text):
    """A duration that is empty, not positive, unitless garbage or two units is refused, never read as
    0."""
    with pytest.raises(BluError):
        parse_duration(text)


def test_config_json_round_trip_and_rejects_unknown_keys():
    """config.json round-trips the model config; a misspelt key or a mistyped value is refused, not
    ignored."""
    config = PRESETS["cpu"].model
    assert from_dict(ModelConfig, to_dict(config)) == config
    with pytest.raises(BluError, match="unknown"):
        from_dict(ModelConfig, {**to_dict(config), "n_layers": 3})
    with pytest.raises(BluError, match="should be int"):
        from_dict(ModelConfig, {**to_dict(config), "dim": "128"})


@pytest.mark.parametrize("change", [{"dim": 100, "n_head": 8}, {"n_head": 8, "n_kv_head": 3}, {"dim": 0},
                                    {"dropout": 1.0}, {"dropout": -0.1}])
def test_impossible_shapes_are_refused(change):
    """Shapes the model cannot be built with (heads not dividing the width or each other, zero sizes,
    dropout out of [0, 1)) are refused before building."""
    with pytest.raises(BluError):
        ModelConfig(**{**to_dict(PRESETS["seed"].model), "vocab_size": 10, **change}).validate()


def test_training_needs_a_budget():
    """A run with neither steps nor time would never end: refused."""
    with pytest.raises(BluError, match="budget"):
        TrainConfig().validate()


@pytest.mark.parametrize("change", [{"cooldown": 0.0}, {"cooldown": 1.5}, {"optimizer": "sgd"}])
def test_impossible_training_settings_are_refused(change):
    """A cooldown outside (0, 1] or an unknown optimizer is refused, not silently clamped."""
    with pytest.raises(BluError):
        TrainConfig(iters=10, **change).validate()


def test_long_time_budgets_get_the_presets_long_budget_values_unless_the_user_set_them():
    """A long --time budget gets the values the preset measured better for it (dropout), but never over
    the user's own flag or for a step budget."""
    def dropout(time_s=None, iters=None, **overrides):
        return configs_for("cpu", overrides, 66, Budget(iters, time_s))[0].dropout

    assert dropout(time_s=150) == 0.0
    assert dropout(time_s=300) == dropout(time_s=600) == 0.1
    assert dropout(time_s=600, dropout=0.0) == 0.0
    assert dropout(time_s=600, dropout=None) == 0.1  # an unset flag arrives as None
    assert dropout(iters=5000) == 0.0  # step budgets keep the preset's value
