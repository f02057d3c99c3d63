"""The report's figures: a colour key on montages, the violin legend off the data with n, empty montages."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

from acdctool.report import plots

matplotlib.use("Agg")
PNG = b"\x89PNG\r\n\x1a\n"


def _masks(k: int, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2, xx - size / 2)
    m = np.zeros((size, size), np.uint8)
    m[np.hypot(yy - size / 2, xx - size / 4) < size / 5] = 1
    m[d < size / 4] = 2
    m[d < size / 6] = 3
    return np.stack([m] * k)


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {f"dice_{c}": rng.uniform(0.5, 1.0, n) for c in ("rv", "myo", "lv")}
    return pd.DataFrame({**cols, "dice_mean": np.mean(list(cols.values()), axis=0)})


def test_montage_has_a_colour_key_of_the_overlay_colours(tmp_path):
    masks = _masks(2)
    images = np.full(masks.shape, 0.5, np.float32)
    fig = plots.montage_figure(images, {"ground truth": masks, "prediction": masks}, ["a", "b"])
    (key,) = fig.legends
    assert [t.get_text() for t in key.get_texts()] == ["RV", "MYO", "LV"]
    colours = [tuple(np.round(h.get_facecolor()[:3], 6)) for h in key.legend_handles]
    assert colours == [tuple(np.round(plots.LABEL_RGB[label], 6)) for label in (1, 2, 3)]
    matplotlib.pyplot.close(fig)
    path = plots.montage(images, {"ground truth": masks}, ["a", "b"], tmp_path / "m.png")
    assert path.read_bytes().startswith(PNG)


def test_empty_montage_is_a_small_figure_that_says_so(tmp_path):
    none = np.zeros((0, 32, 32))
    fig = plots.montage_figure(none, {"before": none.astype(np.uint8)}, [], empty="no deteriorated slices")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["no deteriorated slices"] and not ax.axison
    assert fig.get_figwidth() * fig.get_figheight() < 4  # square inches: a note, not a blank grid
    matplotlib.pyplot.close(fig)
    path = plots.montage(none, {"before": none.astype(np.uint8)}, [], tmp_path / "empty.png")
    assert path.read_bytes().startswith(PNG)


def test_violin_legend_is_outside_the_axes_and_gives_n(tmp_path):
    before, after = _table(40, 0), _table(40, 1)
    after.loc[:4, "dice_rv"] = np.nan  # 5 slices without an RV value
    fig = plots.violin_figure({"before": before, "after": after})
    (ax,) = fig.axes
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0].startswith("before") and "n = 40" in texts[0] and "mean Dice" in texts[0]
    assert texts[1].startswith("after") and "n = 40" in texts[1]
    fig.canvas.draw()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes_box.x1  # right of the axes: never over a violin
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "RV\nn = 40 / n = 35" and ticks[1:] == ["MYO", "LV", "mean"]
    matplotlib.pyplot.close(fig)
    assert plots.violin({"prediction": before}, tmp_path / "v.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("rows", [0, 3])
def test_violin_of_few_or_no_slices_is_drawn(tmp_path, rows):
    path = plots.violin({"before": _table(rows, 0), "after": _table(3, 1)}, tmp_path / "v.png")
    assert path.read_bytes().startswith(PNG)
