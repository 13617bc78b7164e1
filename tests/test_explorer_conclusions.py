"""The 04 explorer, driven through its widgets, and the conclusions the notebooks end with."""

import html
import io
import re

import pandas as pd
import pytest
from PIL import Image

from geoloc_lib.evaluate import conclusions
from geoloc_lib.inference.run_evaluation import evaluate_run
from geoloc_lib.train.loop import fit
from geoloc_lib.viz import photo_maps
from geoloc_lib.viz.explorer import WorstPhotoExplorer


def test_the_explorer_follows_its_controls(tiny_config):
    cfg = tiny_config(batches_per_epoch=4)
    fit(cfg, progress=False)
    evaluation = evaluate_run(cfg.run_dir, "val", baselines=False, progress=False)
    pred = evaluation.predictions
    explorer = WorstPhotoExplorer(pred, evaluation.split, evaluation.predictor)
    assert list(explorer.province.options) == list(pred.sort_values("province_id")["province"].unique())

    explorer.province.value = "Sindh"
    sindh = pred[pred["province"] == "Sindh"].sort_values("error_km", ascending=False)
    assert explorer.rank.value == 1 and explorer.rank.max == len(sindh)
    explorer.rank.value = 2  # the second-worst Sindh photo
    second = sindh.iloc[1]
    assert f"photo {second['id']}" in explorer.info.value
    assert f"distance: {second['error_km']:.1f} km" in explorer.info.value
    with Image.open(io.BytesIO(explorer.photo.value)) as photo:
        assert photo.format == "JPEG" and max(photo.size) <= 256
    width, height = (
        photo_maps.MAP_PX
    )  # its frame is the box its labels were laid out for, not the page's width
    assert f"width:{width}px;max-width:100%;height:{height}px" in explorer.map.value
    page = html.unescape(explorer.map.value)
    assert "L.map(" in page and f"{second['latitude']}" in page  # the truth is on the small map
    assert "cdn.jsdelivr" not in page
    assert "probability per cell" in page and "90 % credible radius" in page  # the photo's probability map
    assert f"90 % {second['radius_90_km']:.0f} km" in explorer.info.value  # its credible radii
    # the hypotheses table lists the model's own top hypotheses for that photo, most probable first
    hypotheses = evaluation.predictor.predict(
        [evaluation.split.set_index("id").loc[second["id"], "image_path"]]
    )
    top = hypotheses["hypotheses"].iloc[0][0]
    assert (
        f"<td>1</td><td>{top['province']}</td><td>{top['cell_id']}</td><td>{top['prob']:.3f}</td>"
        in explorer.info.value
    )

    explorer.province.value = explorer.province.options[-1]  # another province: back to its worst photo
    assert explorer.rank.value == 1
    worst = pred[pred["province"] == explorer.province.value]["error_km"].max()
    assert f"distance: {worst:.1f} km" in explorer.info.value


def test_the_error_conclusion_names_the_reasons():
    per_province = pd.DataFrame(
        {
            "photos": [100, 12, 30],
            "province_acc": [99.0, 50.0, 90.0],
            "median_error_km": [10.0, 300.0, 40.0],
            "acc_25km": [80.0, 0.0, 30.0],
        },
        index=pd.Index(["Sindh", "Balochistan", "Punjab"], name="province"),
    )
    cells = pd.DataFrame(
        {"province": ["Sindh", "Sindh", "Balochistan", "Punjab"], "radius_km": [20, 30, 532, 40]}
    )
    train = pd.DataFrame({"province": ["Sindh"] * 500 + ["Balochistan"] * 20 + ["Punjab"] * 80})
    names = ["Sindh", "Balochistan", "Punjab"]
    confusion = pd.DataFrame([[98, 1, 1], [6, 6, 0], [0, 0, 30]], index=names, columns=names)
    text = conclusions.errors(per_province, cells, train, confusion)
    lines = text.splitlines()
    assert lines[0].startswith("- **Balochistan**: median 300 km")  # worst first
    assert "its 1 cell(s) are wide (median radius 532 km)" in lines[0]
    assert "only 20 training photos" in lines[0]
    assert "6 of 12 photos were placed in Sindh" in lines[0]
    assert lines[-1] == "- Best placed: Sindh, median 10 km."


def test_the_training_conclusion_compares_with_the_baseline():
    losses = pd.DataFrame(
        {
            "epoch": [1, 1, 2, 2, 3, 3],
            "split": ["train", "val"] * 3,
            "median_error_km": [9, 60.0, 9, 30.0, 9, 40.0],
            "loss_total": [3.0, 2.0, 2.0, 1.5, 1.5, 1.4],
        }
    )
    text = conclusions.training(losses, best_epoch=2, baseline_km=180.0)
    assert (
        "Best epoch 2 of 3: validation median 30.0 km, 6.0x better than the constant baseline (180.0 km)"
        in text
    )
    assert "ranged 30.0-60.0 km" in text
    assert "Warning" not in text and "Overfitting" not in text


def test_a_model_worse_than_the_baseline_is_called_worse_with_the_right_factor():
    losses = pd.DataFrame(
        {
            "epoch": [1, 1],
            "split": ["train", "val"],
            "median_error_km": [700.0, 680.8],
            "loss_total": [5.0, 5.0],
        }
    )
    text = conclusions.training(losses, best_epoch=1, baseline_km=203.0)
    assert "3.4x worse than the constant baseline (203.0 km)" in text  # 680.8 / 203 = 3.35
    assert "better" not in text and "**Warning**: the model does not beat a constant guess" in text


def test_overfitting_is_named_with_the_epoch_kept():
    losses = pd.DataFrame(
        {
            "epoch": [e for e in range(1, 6) for _ in range(2)],
            "split": ["train", "val"] * 5,
            "median_error_km": [50, 40, 45, 30, 40, 32, 35, 35, 30, 38],
            "loss_total": [1.0, 0.70, 0.8, 0.67, 0.6, 0.75, 0.5, 0.82, 0.4, 0.88],
        }
    )
    text = conclusions.training(losses, best_epoch=2, baseline_km=190.0)
    assert "**Overfitting**: the validation loss rose from 0.670 (epoch 2) to 0.880 (epoch 5)" in text
    assert "training loss fell from 0.800 to 0.400" in text and "kept checkpoint is epoch 2" in text


def test_a_rising_loss_with_a_median_still_falling_is_not_called_overfitting():
    # a short run (issue: 106.6 -> 65.3 km while the loss rose): the best epoch is the last one
    losses = pd.DataFrame(
        {
            "epoch": [e for e in range(1, 5) for _ in range(2)],
            "split": ["train", "val"] * 4,
            "median_error_km": [120, 106.6, 100, 90.0, 90, 80.2, 80, 65.3],
            "loss_total": [1.0, 0.70, 0.8, 0.66, 0.6, 0.72, 0.5, 0.80],
        }
    )
    text = conclusions.training(losses, best_epoch=4, baseline_km=190.0)
    assert "Overfitting" not in text and "will not help" not in text
    assert (
        "**Loss and median disagree**: the validation loss rose from 0.660 (epoch 2) to 0.800 (epoch 4)"
        in text
    )
    assert "lowest at the last epoch (4)" in text and "More epochs may still lower the median" in text


def test_the_ladder_conclusion_warns_about_every_rung_the_model_loses_to():
    table = pd.DataFrame(
        {"median_error_km": [503.0, 190.0, 600.0]},
        index=["model (joint decoding)", "constant", "1-NN"],
    )
    text = conclusions.ladder(table)
    assert "2.6x worse than constant (190.0 km)" in text  # 503 / 190 = 2.65
    assert "19 % better than 1-NN (600.0 km)" in text  # 600 / 503 = 1.19
    assert "**Warning**: the model does not beat constant;" in text


def test_a_one_step_model_is_reported_worse_than_the_constant_in_03_and_04(tiny_config):
    from geoloc_lib.evaluate.baselines import constant_baseline
    from geoloc_lib.inference.run_evaluation import evaluate_run
    from geoloc_lib.run.folder import load_run_data
    from geoloc_lib.train.loop import fit

    # one step at a learning rate too small to move the heads: the model is still its random initialisation
    cfg = tiny_config(epochs=1, batches_per_epoch=1, warmup_steps=0, lr=1e-9)
    result = fit(cfg, progress=False)
    losses = pd.read_csv(cfg.run_dir / "losses.csv")
    constant = constant_baseline(load_run_data(cfg).train, load_run_data(cfg).val)["median_error_km"]
    model_km = result.best_val["median_error_km"]
    assert model_km > constant  # one step has learnt nothing yet
    text = conclusions.training(losses, result.best_epoch, constant)
    assert _stated_factor(text, "the constant baseline") == pytest.approx(model_km / constant, abs=0.051)
    table = evaluate_run(cfg.run_dir, "test", progress=False).tables["ladder"]
    model_test, constant_test = table.iloc[0]["median_error_km"], table.iloc[1]["median_error_km"]
    assert model_test > constant_test
    text = conclusions.ladder(table)
    assert _stated_factor(text, table.index[1]) == pytest.approx(model_test / constant_test, abs=0.051)
    assert "**Warning**: the model does not beat" in text


def _stated_factor(text: str, other: str) -> float:
    """The factor a conclusion states for being worse than `other` ("2.6x" or "9 %" -> 1.09)."""
    match = re.search(r"([0-9.]+)(x| %) worse than " + re.escape(other), text)
    assert match, text
    value = float(match.group(1))
    return value if match.group(2) == "x" else 1 + value / 100


def test_the_fine_tuning_conclusion_states_the_direction_and_the_stop():
    best = pd.DataFrame({"median_error_km": [20.0, 24.0], "best_epoch": [6, 2]}, index=["p1", "p2"])
    text = conclusions.fine_tuning(best, "p1", "p2", "the validation median has been above its best")
    assert "validation median 24.0 km, 20 % worse than Phase 1 (p1, epoch 6) (20.0 km)" in text
    assert "did not improve on Phase 1" in text and "Stopped early: the validation median" in text
    better = best.assign(median_error_km=[20.0, 10.0])
    text = conclusions.fine_tuning(better, "p1", "p2", None)
    assert "2.0x better than Phase 1" in text and "did not improve" not in text
    assert "no early-stopping signal fired" in text


def test_the_audit_says_how_to_split_a_wide_cell_or_that_it_cannot_be():
    balance = pd.DataFrame(
        {
            "train": [200, 29, 14],
            "train_share_%": [82.0, 12.0, 6.0],
            "batch_share_%": [25.0, 12.5, 12.5],
            "cells": [4, 1, 1],
        },
        index=["Sindh", "Punjab", "Balochistan"],
    )
    cells = pd.DataFrame(
        {"cells": [4.0, 1.0, 1.0], "median_radius_km": [90.0, 357.0, 421.0]}, index=balance.index
    )
    leakage = pd.DataFrame({"count": [0]}, index=["shared images"])
    text = conclusions.audit(balance, cells, leakage)
    assert "Punjab's cells are wide (median radius 357 km over 1 cell(s))" in text
    assert (
        "smaller --geocell-min-samples (each cell needs that many training photos; 29 allow at most 3" in text
    )
    assert "Its 14 training photos are too few for more cells of 8" in text and "Sindh's cells" not in text
