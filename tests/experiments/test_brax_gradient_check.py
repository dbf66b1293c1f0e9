"""experiments/brax_gradient_check: its presets check their values; its table (no Brax compile)."""

import dataclasses

import pytest

from experiments import brax_gradient_check as bgc


def test_presets_reject_bad_values_naming_them():
    with pytest.raises(ValueError, match="unknown backends \\['nope'\\]"):
        dataclasses.replace(bgc.PRESETS["cpu"], backends=("nope",))
    with pytest.raises(ValueError, match="horizons"):
        dataclasses.replace(bgc.PRESETS["cpu"], horizons=(0,))


def test_table_has_one_column_per_step():
    preset = bgc.PRESETS["cpu"]
    row = {
        "task": "halfcheetah",
        "backend": "positional",
        "n": 8,
        "grad_norm": 12.5,
        "relative_error": {f"{h:g}": 0.5 for h in preset.steps},
    }
    lines = bgc.format_rows([row], preset).splitlines()
    assert len(lines) == 3 and lines[2].count("|") == 5 + len(preset.steps)
