"""Credible radii (split-conformal) and the confidence ranking: known answers, then a trained run end to end."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from geoloc_lib.data.splits import BLOCK_REFERENCE_LAT, KM_PER_DEG_LAT
from geoloc_lib.evaluate import conclusions
from geoloc_lib.evaluate.calibration import (
    LEVELS,
    RadiusCalibration,
    _fit,
    calibrate,
    calibrated_range,
    conformal_quantile,
    correlation_scale,
    coverage_table,
    pinball_loss,
    radius_confidence,
)
from geoloc_lib.evaluate.novelty import SIGNALS, NoveltyIndex
from geoloc_lib.evaluate.selective import selective_accuracy, selective_figures, spearman
from geoloc_lib.evaluate.strangers import STRANGER_KINDS
from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.inference.run_evaluation import evaluate_run, read_evaluation
from geoloc_lib.predict import main
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.train.loop import fit

CELLS = pd.DataFrame({"cell_id": [0, 1], "radius_km": [10.0, 80.0]})


SPREAD = "mixture_and_cell"  # the spread the generated errors follow


def _spread(frame: pd.DataFrame) -> np.ndarray:
    """[N] the hypotheses' spread and the cell's radius in quadrature, computed here independently."""
    return np.hypot(frame["pred_cell_id"].map({0: 10.0, 1: 80.0}), frame["pred_spread_km"]).to_numpy()


def _predictions(rng, n, province=0):
    """Errors that are the spread (hypotheses' and cell's) times an Exp(1) draw: error / spread is
    exchangeable."""
    frame = pd.DataFrame(
        {
            "pred_spread_km": rng.uniform(5, 100, n),
            "pred_cell_id": rng.integers(0, 2, n),
            "pred_province_id": province,
            "province_id": province,
        }
    )
    return frame.assign(error_km=_spread(frame) * rng.exponential(1.0, n))


def _quantile_by_hand(scores, level):
    """The score at rank (n + 1) x level, linearly interpolated (np.interp on the 0-based ranks)."""
    ordered = np.sort(np.asarray(scores, float))
    return float(np.interp((len(ordered) + 1) * level - 1, np.arange(len(ordered)), ordered))


def test_the_conformal_quantile_by_hand():
    scores = np.arange(1.0, 10.0)  # 1..9
    assert conformal_quantile(scores, 0.5) == 5.0  # rank 10 x 0.5 = 5: the 5th smallest
    assert conformal_quantile(scores, 0.9) == 9.0  # rank 9
    assert conformal_quantile(scores, 0.75) == 7.5  # rank 7.5: halfway from the 7th to the 8th
    assert conformal_quantile(scores, 0.95) == math.inf  # rank 9.5 of 9 scores does not exist
    assert conformal_quantile(scores, 0.95, too_few=9.0) == 9.0


def test_the_interpolated_quantile_covers_its_level_on_average_at_small_n():
    """17 validation scores, the 90 % level: rank 16.2. For uniform scores E[U_(k)] = k / 18, so the interpolated
    quantile covers 16.2 / 18 = 90 % of new scores on average, where the 17th smallest alone covers 94.4 %."""
    draws = np.random.default_rng(8).uniform(size=(20000, 17))
    coverage = np.array([conformal_quantile(row, 0.9) for row in draws])  # uniform: coverage = the quantile
    assert coverage.mean() == pytest.approx(0.9, abs=0.003)  # 20,000 draws: about 4 standard errors
    assert np.sort(draws, axis=1)[:, 16].mean() == pytest.approx(17 / 18, abs=0.003)


def test_radii_reach_their_nominal_coverage_on_errors_of_a_known_distribution():
    rng = np.random.default_rng(0)
    validation, test = _predictions(rng, 2000), _predictions(rng, 20000)
    calibration, candidates = calibrate(validation, CELLS)
    # the spread that scales the errors predicts their quantiles best: the lowest held-out pinball loss
    assert calibration.spread == SPREAD and candidates["spread"].iloc[0] == SPREAD
    by_spread = candidates.groupby("spread")["pinball_loss_km"].min()
    assert by_spread[SPREAD] < by_spread["cell_radius"]
    # the quantiles of Exp(1): ln 2 and ln 10
    assert calibration.pooled[0.5] == pytest.approx(math.log(2), rel=0.08)
    assert calibration.pooled[0.9] == pytest.approx(math.log(10), rel=0.08)
    covered = coverage_table(test, calibration.radii(test, CELLS), calibration).loc["all"]
    assert covered["coverage_50_%"] == pytest.approx(50, abs=2.5)  # about 3 standard errors
    assert covered["coverage_90_%"] == pytest.approx(90, abs=1.5)


def test_a_province_quantile_is_pooled_by_hand():
    """A province of 20 photos with tau = 20 weighs its own quantile and the pooled one alike: their geometric
    mean. One of 400 photos keeps nearly its own."""
    rng = np.random.default_rng(1)
    calm, wild = _predictions(rng, 400, province=0), _predictions(rng, 20, province=1)
    wild["error_km"] *= 10  # a province whose errors are ten times larger
    both = pd.concat([calm, wild], ignore_index=True)
    calibration = _fit(both, CELLS, SPREAD, LEVELS, pooling=20.0)  # the spread fixed, to check by hand
    scores = both["error_km"] / _spread(both)
    pooled = _quantile_by_hand(scores, 0.9)
    wild_own = _quantile_by_hand(scores[both["province_id"] == 1], 0.9)  # rank 18.9 of 20
    calm_own = _quantile_by_hand(scores[both["province_id"] == 0], 0.9)
    assert calibration.pooled[0.9] == pytest.approx(pooled)
    assert calibration.per_province[1][0.9] == pytest.approx(math.sqrt(wild_own * pooled))
    assert calibration.per_province[0][0.9] == pytest.approx(calm_own ** (400 / 420) * pooled ** (20 / 420))
    assert wild_own > 5 * pooled  # the pooling matters here: the wild province is far from the pool
    radii = calibration.radii(pd.concat([calm.head(1), wild.head(1)], ignore_index=True), CELLS)[
        "radius_90_km"
    ]
    assert radii[1] == pytest.approx(calibration.per_province[1][0.9] * _spread(wild.head(1))[0])
    assert RadiusCalibration.from_dict(calibration.to_dict()) == calibration
    # w = 1/2 from 20 photos and 1/2 from 420: the spread of a quantile of 1 / (1/80 + 1/1680) = 76.4 photos
    assert calibration.effective_photos(1) == pytest.approx(1 / (0.25 / 20 + 0.25 / 420))
    assert calibration.effective_photos(None) == 420
    # a province with fewer photos than the level needs (rank 8.1 of 8 at 90 %) takes its largest score as its own
    few = _fit(pd.concat([calm, wild.head(8)], ignore_index=True), CELLS, SPREAD, LEVELS, 20.0)
    few_scores = scores[400:408]
    assert few.per_province[1][0.9] == pytest.approx(
        few_scores.max() ** (8 / 28) * few.pooled[0.9] ** (20 / 28)
    )


def test_a_run_calibrated_before_partial_pooling_still_loads():
    old = {"spread": "cell_radius", "levels": [0.5, 0.9], "pooled": {"0.5": 1.0, "0.9": 3.0}, "photos": 300}
    old |= {"per_province": {"0": {"0.5": 0.8, "0.9": 2.0}}, "min_photos": 20}
    calibration = RadiusCalibration.from_dict(old)
    radii = calibration.radii(pd.DataFrame({"pred_cell_id": [0, 1], "pred_province_id": [0, 3]}), CELLS)
    assert radii["radius_90_km"].tolist() == [20.0, 240.0]  # Sindh's own quantile, the pooled one elsewhere


def test_the_calibrated_range_holds_the_simulated_coverages_of_a_small_province():
    """Punjab's sizes on the demo: a conformal median of 28 validation scores, scored on 56 test photos. The
    coverages of 4,000 such draws fall inside the range as often as the beta-binomial says, and the range is
    wider than the test photos' binomial error alone, by the calibration's own draw."""
    rng = np.random.default_rng(6)
    low, high = calibrated_range(0.5, 28, 56)
    ordered = np.sort(rng.exponential(size=(4000, 28)), axis=1)
    quantiles = (
        ordered[:, 13] + ordered[:, 14]
    ) / 2  # rank 29 x 0.5 = 14.5: halfway from the 14th to the 15th
    covered = 100 * (rng.exponential(size=(4000, 56)) <= quantiles[:, None]).mean(axis=1)
    inside = np.mean((covered >= low) & (covered <= high))
    k_low, k_high = round(low * 56 / 100), round(high * 56 / 100)
    mass = stats.betabinom.cdf(k_high, 56, 14.5, 14.5) - stats.betabinom.cdf(k_low - 1, 56, 14.5, 14.5)
    assert mass >= 0.95 and inside == pytest.approx(mass, abs=0.012)  # 4,000 draws: 3.5 standard errors
    binomial_low, binomial_high = stats.binom.interval(0.95, 56, 0.5)
    assert (high - low) - 100 * (binomial_high - binomial_low) / 56 > 10
    assert calibrated_range(0.9, 8, 100) == (100.0, 100.0)  # rank 8.1 of 8 scores: an infinite radius


def _even_predictions(n, province):
    """Errors that are the spread times the n evenly spaced quantiles of Exp(1): no sampling noise at all."""
    predictions = _predictions(np.random.default_rng(province), n, province)
    predictions["error_km"] = _spread(predictions) * -np.log1p(-(np.arange(n) + 0.5) / n)
    return predictions


def test_the_conclusion_names_a_province_outside_its_range():
    validation = pd.concat([_even_predictions(600, 0), _even_predictions(300, 1)], ignore_index=True)
    test = validation.copy()
    calibration = _fit(validation, CELLS, SPREAD, LEVELS, pooling=20.0)
    test.loc[test["province_id"] == 1, "error_km"] *= 3  # Punjab's test photos are three times harder
    table = coverage_table(test, calibration.radii(test, CELLS), calibration)
    assert table.loc["Sindh", "calibrated_50_low_%"] < 50 < table.loc["Sindh", "calibrated_50_high_%"]
    text = conclusions.trust(
        table, pd.DataFrame({"value": selective_accuracy(test.assign(confidence=1.0))[1]})
    )
    punjab = table.loc["Punjab", "coverage_50_%"]
    # 1 - exp(-ln 2 / 3) = 20.6 % of three-times-larger errors fall inside the median radius
    assert punjab == pytest.approx(100 * (1 - 2 ** (-1 / 3)), abs=1.5)
    assert f"Outside their own ranges: Punjab ({punjab:.0f} %)" in text and "Sindh (" not in text


def test_the_pinball_loss_by_hand_and_its_minimum_at_the_quantile():
    # above the radius the miss costs level x distance, inside it (1 - level) x distance
    assert pinball_loss(np.array([10.0, 2.0]), np.array([4.0, 4.0]), 0.9).tolist() == pytest.approx(
        [5.4, 0.2]
    )
    rng = np.random.default_rng(4)
    errors = rng.exponential(1.0, 20000)
    radii = np.linspace(0.5, 4.0, 351)
    mean_loss = [pinball_loss(errors, np.full_like(errors, r), 0.9).mean() for r in radii]
    assert radii[int(np.argmin(mean_loss))] == pytest.approx(math.log(10), abs=0.05)  # Exp(1)'s 90 % quantile


def test_a_spread_that_misses_a_province_loses_to_one_that_fits_every_province():
    """The small province's errors follow its wide cell, not the predicted spread: with the spread alone and one
    pooled quantile its 90 % radius would cover about a quarter of them. The chosen calibration covers both."""
    rng = np.random.default_rng(5)
    big, small = _predictions(rng, 900, province=0), _predictions(rng, 100, province=1)
    both = pd.concat([big, small], ignore_index=True)
    cells = pd.DataFrame({"cell_id": [0, 1], "radius_km": [10.0, 80.0]})
    both["pred_cell_id"] = both["province_id"]  # the small province sits in the wide cell
    both.loc[both["province_id"] == 1, "error_km"] *= 8  # its errors follow its cell, not the spread
    both.loc[both["province_id"] == 1, "pred_spread_km"] = 20.0
    calibration, _ = calibrate(both, cells)
    radii = calibration.radii(both, cells)["radius_90_km"]
    covered = (both["error_km"] <= radii).groupby(both["province_id"]).mean()
    assert covered[0] == pytest.approx(0.9, abs=0.04) and covered[1] == pytest.approx(0.9, abs=0.07)


def test_spearman_against_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=50), rng.normal(size=50)
    b[:10] = a[:10]  # some ties and some agreement
    a[5] = a[6]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0])


def test_confidence_falls_as_the_radius_grows():
    assert radius_confidence([0.0, 25.0, 75.0]).tolist() == [1.0, 0.5, 0.25]


def test_a_confidence_that_orders_errors_perfectly():
    confidence = np.linspace(0.05, 0.95, 200)
    pred = pd.DataFrame({"confidence": confidence, "error_km": 100 - 90 * confidence})
    curve, summary = selective_accuracy(pred)
    assert summary["spearman_confidence_vs_closeness"] == pytest.approx(1.0)
    kept = curve.loc["confidence", "median_error_km"]
    assert kept.is_monotonic_increasing  # fewer, surer photos: smaller errors
    assert kept[10] == pytest.approx(np.median(np.sort(pred["error_km"])[:20]))
    assert summary["curve_mean_median_km"] < summary["random_curve_mean_median_km"]
    rankings = set(curve.index.get_level_values("ranking"))
    assert rankings == {"confidence", "random"}  # no radius, no probability


def test_selective_accuracy_endpoints_by_hand():
    """Ten photos with errors 10, 20, ..., 100 km. Confidence ranks them best first, the 90 % radius worst first,
    the top hypothesis's probability puts 100 km first and then the rest from 10 km up."""
    error = np.arange(10.0, 101.0, 10.0)
    pred = pd.DataFrame(
        {
            "error_km": error,
            "confidence": 1 - error / 200,
            # a large radius on the small errors: a ranking that orders them backwards
            "radius_90_km": 200 - error,
            "pred_cell_prob": np.r_[np.linspace(0.9, 0.5, 9), 0.95],
        }
    )
    curve, _ = selective_accuracy(pred)
    figures = selective_figures(curve)
    # 5 % of 10 photos rounds to 0: at least one photo is kept
    assert (
        curve.loc[("confidence", 5), "photos"] == 1 and curve.loc[("confidence", 5), "median_error_km"] == 10
    )
    assert curve.loc[("90 % radius", 5), "median_error_km"] == 100
    assert curve.loc[("top hypothesis", 10), "median_error_km"] == 100
    # half kept: confidence keeps 10..50 (median 30, two within 25 km), the radius 60..100 (median 80, none)
    assert figures.loc["confidence", "median_error_km at 50 %"] == 30
    assert figures.loc["confidence", "acc_25km at 50 %"] == 40
    assert figures.loc["90 % radius", "median_error_km at 50 %"] == 80
    assert figures.loc["90 % radius", "acc_25km at 50 %"] == 0
    # top hypothesis at 50 %: 100, 10, 20, 30, 40 -> median 30; at 80 %: 100 and 10..70 -> median 45
    assert figures.loc["top hypothesis", "median_error_km at 50 %"] == 30
    assert figures.loc["top hypothesis", "median_error_km at 80 %"] == 45
    # every photo kept: every ranking, random included, has the median and accuracy of all ten
    assert (figures["median_error_km at 100 %"] == 55).all() and (figures["acc_25km at 100 %"] == 20).all()
    assert list(figures.index) == ["confidence", "90 % radius", "top hypothesis", "random"]


def test_a_trained_run_carries_radii_into_the_predictor_the_cli_and_its_evaluation(
    tiny_config, tmp_path, capsys
):
    cfg = tiny_config(epochs=2, batches_per_epoch=20)
    fit(cfg, progress=False)
    folder = RunFolder(cfg.run_dir)
    assert folder.calibration.is_file()
    evaluation = evaluate_run(cfg.run_dir, "test", progress=False)
    pred = read_evaluation(folder.evaluation, "predictions")
    assert (pred["radius_50_km"] <= pred["radius_90_km"]).all() and (pred["radius_50_km"] > 0).all()
    coverage = read_evaluation(folder.evaluation, "coverage")
    assert coverage.loc["all", "photos"] == len(evaluation.split)
    own = 100 * (pred["error_km"] <= pred["radius_90_km"]).mean()  # counted again from the saved table
    assert coverage.loc["all", "coverage_90_%"] == pytest.approx(own)
    image = evaluation.split["image_path"].iloc[0]
    direct = Predictor.from_run(cfg.run_dir).predict([image])
    assert direct["radius_90_km"].iloc[0] == pytest.approx(pred["radius_90_km"].iloc[0], rel=2e-2)
    main([str(cfg.run_dir), image, "--csv", str(tmp_path / "out.csv")])
    written = pd.read_csv(tmp_path / "out.csv")
    assert {"radius_50_km", "radius_90_km", "confidence"} <= set(written.columns)
    assert "radius_90_km" in capsys.readouterr().out


def _unlike_any_training_photo(tmp_path) -> list[str]:
    """A plot, a flat colour and a photo of another generator (smooth noise), as PNG files."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 3))
    ax.plot(np.arange(10), np.arange(10) ** 2)
    ax.set_title("a chart")
    fig.savefig(tmp_path / "chart.png")
    plt.close(fig)
    Image.new("RGB", (96, 96), (255, 0, 255)).save(tmp_path / "flat.png")
    noise = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((96, 96), Image.BICUBIC).save(tmp_path / "noise.png")
    return [str(tmp_path / name) for name in ("chart.png", "flat.png", "noise.png")]


def _real_photos_from_elsewhere(tmp_path, n: int = 16) -> list[str]:
    """Crops of the two real photos that ship with scikit-learn (a temple in China, a flower), as JPEG files: a
    kind of stranger the out-of-domain rule never met in its choice (it is chosen on generated strangers)."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        photo = load_sample_images().images[i % 2]  # [427, 640, 3] uint8
        top, left = rng.integers(0, 427 - 200), rng.integers(0, 640 - 200)
        crop = Image.fromarray(photo[top : top + 200, left : left + 200]).resize((96, 96), Image.BICUBIC)
        paths.append(str(tmp_path / f"real{i}.jpg"))
        crop.save(paths[-1])
    return paths


SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "exif_photos"


def test_photos_unlike_any_training_photo_are_flagged_and_the_cli_exits_1(tiny_config, tmp_path, capsys):
    cfg = tiny_config(epochs=2, batches_per_epoch=20)
    fit(cfg, progress=False)
    folder = RunFolder(cfg.run_dir)
    index = NoveltyIndex.load(folder.novelty)
    # the rule was chosen on the generated kinds only, and says what each signal caught of them
    assert set(index.report["chosen"]["caught_%"]) == set(STRANGER_KINDS)
    assert set(index.report["per_signal"]) == set(SIGNALS) and set(index.signals) <= set(SIGNALS)
    test = pd.read_csv(Path(cfg.data_dir) / "test.csv")
    own = [str(Path(cfg.data_dir) / image) for image in test["image"]]
    real = _real_photos_from_elsewhere(tmp_path)
    drawn = _unlike_any_training_photo(tmp_path)
    predictor = Predictor.from_run(cfg.run_dir)
    placed = predictor.predict(own + real + drawn)
    flagged = placed["out_of_domain"].to_numpy()
    # the test photos stand in location blocks no training photo shares: genuine new photos. The threshold is
    # validation's 97 % quantile; on the tiny run's 30-odd validation photos that is about their second largest,
    # so a few genuine photos in a hundred go over
    assert flagged[: len(own)].mean() <= 0.1, flagged[: len(own)].mean()
    # real photos from outside the training world
    assert flagged[len(own) : len(own) + len(real)].mean() >= 0.8
    assert flagged[-3:].all()  # a chart, a flat colour and smooth noise
    try:
        main([str(cfg.run_dir), *drawn])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 1 and err.count("unlike every training photo") == 3
    # real camera photos with GPS, all outside Pakistan, where this machine has them
    if SHARED_PHOTOS.is_dir():
        shared = sorted(str(p) for p in SHARED_PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        assert predictor.predict(shared)["out_of_domain"].mean() >= 0.8


@pytest.mark.slow
def test_street_strangers_the_rule_never_saw_are_flagged_and_genuine_new_photos_are_not(tmp_path):
    """Photos with the demo's street layout in another world (ground colours no province has, places outside
    Pakistan) are flagged; photos of new places in Pakistan are not, beyond the threshold's own price."""
    from dataclasses import replace

    from conftest import TINY_TRAINING

    from geoloc_lib.data.demo_data import TINY_DEMO, generate_demo_dataset
    from geoloc_lib.evaluate.strangers import street_strangers
    from geoloc_lib.run.spec import TrainConfig

    # bigger than the tiny data: its 30-odd validation photos would leave the threshold too loose to judge
    data = generate_demo_dataset(tmp_path / "data", replace(TINY_DEMO, n_train=1200, n_test=300, workers=2))
    runs = tmp_path / "runs"
    common = {
        "data_dir": str(data),
        "runs_dir": str(runs),
        "cache_dir": str(runs / "cache"),
        "phase0_checkpoint": "",
    }
    cfg = TrainConfig(**(common | TINY_TRAINING))
    fit(cfg, progress=False)
    index = NoveltyIndex.load(RunFolder(cfg.run_dir).novelty)
    assert "street" not in index.report["chosen"]["caught_%"]  # a kind the rule's choice never saw
    assert "uncertainty" in index.report["per_signal"]  # the heads' own doubt was among the candidates
    predictor = Predictor.from_run(cfg.run_dir)
    street = predictor.predict(street_strangers(128, TINY_DEMO.image_size, seed=1))["out_of_domain"].mean()
    assert street >= 0.8, street
    validation = evaluate_run(cfg.run_dir, split="val").tables["predictions"]["out_of_domain"]
    assert validation.mean() <= 0.05  # the validation blocks the threshold was set on: 3 % by construction
    test = pd.read_csv(data / "test.csv")
    genuine = predictor.predict([str(data / image) for image in test["image"]])["out_of_domain"].mean()
    # photos of blocks no training or validation photo shares: 3 % is the price, give or take two standard
    # deviations of the threshold (a quantile of len(validation) scores) and of this sample
    q = index.quantile
    spread = math.sqrt(q * (1 - q) / (len(validation) + 2) + q * (1 - q) / len(test))
    assert genuine <= (1 - q) + 2 * spread, (genuine, len(validation), len(test))


def test_a_photos_probability_map_covers_every_cell_and_agrees_with_its_hypotheses(
    tiny_config, tmp_path, capsys
):
    from geoloc_lib.inference.predictor import map_inputs

    cfg = tiny_config(epochs=1, batches_per_epoch=10)
    fit(cfg, progress=False)
    predictor = Predictor.from_run(cfg.run_dir)
    image = str(Path(cfg.data_dir) / pd.read_csv(Path(cfg.data_dir) / "test.csv")["image"].iloc[0])
    cells, prediction, radii = map_inputs(predictor, predictor.predict([image], cell_probs=True).iloc[0])
    assert len(cells) == len(predictor.cells) and cells["prob"].sum() == pytest.approx(1.0, abs=1e-4)
    for h in predictor.predict([image])["hypotheses"].iloc[0]:  # the top hypotheses' own probabilities
        assert cells.set_index("cell_id").loc[h["cell_id"], "prob"] == pytest.approx(h["prob"], rel=1e-4)
    try:
        main(
            [str(cfg.run_dir), image, "--map", str(tmp_path / "photo.html"), "--csv", str(tmp_path / "a.csv")]
        )
    except SystemExit as exit_:
        assert exit_.code in (0, 1)  # 1 when the tiny model flags its own photo
    assert "cell_probs" not in pd.read_csv(tmp_path / "a.csv").columns  # the map's input stays out of the CSV
    page = (tmp_path / "photo.html").read_text()
    # every cell's region with its probability, and the credible radius as a circle
    assert len(re.findall(r'"tip": "cell \d+ \(', page)) == len(cells) and page.count("L.circle(") == 2
    assert (
        "50 % credible radius" in page and "90 % credible radius" in page and "probability per cell" in page
    )
    try:
        main([str(cfg.run_dir), image, image, "--map", str(tmp_path / "two.html")])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "give one photo" in capsys.readouterr().err


def _bench_table(sindh_50, all_50):
    """One dataset's coverage rows, Sindh and overall, with fixed calibrated ranges of 44-56 % and 45-55 %."""
    return pd.DataFrame(
        {
            "photos": [400, 600],
            "coverage_50_%": [sindh_50, all_50],
            "calibrated_50_low_%": [44.0, 45.0],
            "calibrated_50_high_%": [56.0, 55.0],
        },
        index=pd.Index(["Sindh", "all"], name="province"),
    )


def test_the_calibration_bench_flags_and_averages_by_hand():
    from tools.bench_calibration import summary

    rows, by_province = summary({21: _bench_table(43.0, 50.0), 22: _bench_table(55.0, 56.0)})
    assert rows["inside_50"].tolist() == [False, True, True, False]
    assert by_province.loc["Sindh", "coverage_50_% mean"] == 49.0
    assert by_province.loc["all", "coverage_50_% max"] == 56.0 and by_province.loc["all", "datasets"] == 2


def test_the_calibration_verdict_by_hand():
    from tools.bench_calibration import summary, verdict, z_bound

    # the Bonferroni bounds: two-sided 5 % shared by 2 means, and by 14 (7 groups at two levels)
    assert z_bound(2) == pytest.approx(2.2414, abs=1e-4) and z_bound(14) == pytest.approx(2.9137, abs=1e-4)
    # Sindh's range 44-56 % in both datasets: sd 12 / 3.92 = 3.061 each; the mean of two has sd 3.061 / sqrt 2 =
    # 2.165 (a 95 % spread of +- 4.2). All photos': 45-55 %, sd 10 / 3.92 / sqrt 2 = 1.804
    passed, lines = verdict(*summary({21: _bench_table(47.0, 50.0), 22: _bench_table(51.0, 52.0)}))
    assert passed and lines[-1] == "verdict: PASS" and "4 of 4" in lines[0]
    # means 49 and 51: z = -1 / 2.165 = -0.46 and 1 / 1.804 = +0.55
    assert any(line.startswith("PASS: Sindh") and "50 +- 4.2; z = -0.46)" in line for line in lines)
    assert any(line.startswith("PASS: all") and "z = +0.55)" in line for line in lines)
    assert any(line.startswith("largest |z|: 0.55 (all at 50 %); bound 2.24 for 2 means") for line in lines)
    # 3 of 4 inside (75 % < 90 %) fails, though both means are close to 50
    passed, lines = verdict(*summary({21: _bench_table(43.0, 50.0), 22: _bench_table(55.0, 52.0)}))
    assert not passed and lines[0].startswith("FAIL: 3 of 4")
    # every coverage inside, but Sindh's mean 55 % is 5 / 2.165 = 2.31 spreads above 50: past the bound of 2.24
    passed, lines = verdict(*summary({21: _bench_table(55.0, 50.0), 22: _bench_table(55.0, 52.0)}))
    assert not passed and any(line.startswith("FAIL: Sindh") and "z = +2.31)" in line for line in lines)
    assert lines[-1] == "verdict: FAIL"


def test_hits_and_misses_correlated_over_regions_count_at_the_regions_scale():
    """16 regions, each one 100 km grid block, of 50 photos scattered across it; in a checkerboard of them the
    errors are ten times larger. Whether a photo is covered is then set by its region: within 10 or 25 km blocks
    photos are few, and a 200 km block holds two hard and two easy regions, so the design effect is largest at
    100 km blocks. There, by hand: the pooled median m of half Exp(1), half 10 Exp(1) solves e^-m + e^-m/10 = 1,
    m = 1.80, covering 83.5 % of easy and 16.5 % of hard photos: an intra-block correlation of the coverage of
    0.335^2 / 0.25 = 0.449; the pooled 90 % quantile (e^-m + e^-m/10 = 0.2, m = 16.1) covers all easy photos and
    80 % of hard ones: 0.1^2 / 0.09 = 0.111. Their mean 0.28 gives a design effect 1 + (50 - 1) x 0.28 = 14.7."""
    rng = np.random.default_rng(9)
    region_row, region_col = np.divmod(np.repeat(np.arange(16), 50), 4)
    km_per_deg_lon = KM_PER_DEG_LAT * math.cos(math.radians(BLOCK_REFERENCE_LAT))
    north_km, east_km = (region_row + rng.uniform(size=800)) * 100, (region_col + rng.uniform(size=800)) * 100
    validation = _predictions(rng, 800).assign(
        latitude=(north_km + 2000) / KM_PER_DEG_LAT,  # offset to whole 200 km blocks as well
        longitude=(east_km + 2000) / km_per_deg_lon,
    )
    hard = (region_row + region_col) % 2 == 1
    validation.loc[hard, "error_km"] *= 10
    assert correlation_scale(validation, CELLS, SPREAD, LEVELS, block_km=10.0) == 100.0
    calibration, _ = calibrate(validation, CELLS)
    assert calibration.block_km == 100.0 and calibration.design == pytest.approx(14.7, rel=0.15)
    # counted as photos / design effect, 800 photos are worth about 55 independent ones
    assert calibration.effective_photos(None) == pytest.approx(800 / calibration.design)
