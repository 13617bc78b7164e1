"""The 04 explorer, driven through its widgets, and the conclusions the notebooks end with."""

import html
import io

import pandas as pd
from PIL import Image

from geoloc_lib.evaluate import conclusions
from geoloc_lib.inference.run_evaluation import evaluate_run
from geoloc_lib.train.loop import fit
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
    page = html.unescape(explorer.map.value)
    assert "L.map(" in page and f"{second['latitude']}" in page  # the truth is on the small map
    assert "cdn.jsdelivr" not in page
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
        }
    )
    text = conclusions.training(losses, best_epoch=2, baseline_km=180.0)
    assert (
        "Best epoch 2 of 3: validation median 30.0 km, 6.0x better than the constant baseline (180 km)"
        in text
    )
    assert "ranged 30.0-60.0 km" in text
