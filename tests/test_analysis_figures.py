"""analysis.figures: what the proxy plots say of ρ, which models share pattern figures, and clear input errors."""

import numpy as np
import pandas as pd
import pytest
from test_analysis_compare import two_rates

from analysis import figures, models


def proxy_titles(monkeypatch, values: list[float], differences: list[float], tmp_path) -> list[str]:
    """The panel titles of the IoU proxy plot of one block over these pairs."""
    titles = []
    monkeypatch.setattr(figures, "save", lambda fig, out, name: titles.extend(ax.get_title() for ax in fig.axes))
    n = len(values)
    table = pd.DataFrame(
        {"setting": "models", "metric": "IoU", "block": 3, "model_a": [f"m{i}" for i in range(n)]}
        | {"mean": values, "score_diff": differences}
    )
    figures.proxy(table, "models", "IoU", tmp_path)
    return titles


def test_proxy_titles_say_why_rho_is_undefined(monkeypatch, tmp_path):
    two = proxy_titles(monkeypatch, [0.2, 0.4], [1.0, 2.0], tmp_path)
    constant = proxy_titles(monkeypatch, [0.5] * 3, [1.0, 2.0, 3.0], tmp_path)
    same_order = proxy_titles(monkeypatch, [0.1, 0.3, 0.2, 0.9], [1.0, 3.0, 2.0, 4.0], tmp_path)
    assert two == ["block 3: ρ undefined: 2 pairs, needs 3"]
    assert constant == ["block 3: ρ undefined: the metric is constant"]
    assert same_order == ["block 3: ρ = 1.00 (n = 4)"]


@pytest.mark.parametrize(("images", "groups"), [((5, 5), 1), ((5, 4), 2)])
def test_models_share_pattern_figures_only_on_the_same_images(tmp_path, cpu_rng, images, groups):
    two_rates(tmp_path, np.random.default_rng(int(cpu_rng.initial_seed())), images)
    found, _ = models.find_models(tmp_path)
    assert len(figures.image_sets(found)) == groups


def test_a_folder_that_is_no_compare_output(tmp_path, capsys):
    with pytest.raises(SystemExit):
        figures.main([str(tmp_path), str(tmp_path / "figures")])
    err = capsys.readouterr().err
    assert "has no comparisons.csv, models.csv, depth_maps.npz" in err and "python -m analysis.compare" in err
    assert not (tmp_path / "figures").exists()
