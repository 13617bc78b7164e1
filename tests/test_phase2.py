"""Phase 2: partial fine-tuning of the encoders' tops from a Phase 1 run, on cached prefixes."""

import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_TRAINING
from PIL import Image

from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.inference.run_evaluation import evaluate_run
from geoloc_lib.model.encoder_config import resolve_encoder_config
from geoloc_lib.model.encoders import DualEncoder
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.early_stopping import StopRules, stop_reason
from geoloc_lib.train.fine_tune import Phase1StartError
from geoloc_lib.train.loop import fit
from geoloc_lib.train.setup import build_training

# the tiny CLIP tower has 2 blocks, ResNet-18 has 4 stages: train the last block and layer4
PHASE2 = {
    "phase": 2,
    "unfreeze_clip_blocks": 1,
    "unfreeze_scene_stages": 1,
    "lr_clip": 1e-4,
    "lr_scene": 5e-5,
}
CLIP_TOP = ("clip.body.transformer.resblocks.1.", "clip.body.ln_post.", "clip.body.proj")
SCENE_TOP = ("scene.body.layer4.",)


@pytest.fixture(scope="module")
def phase1(tiny_data, tmp_path_factory):
    """A finished tiny Phase 1 run (fp32 cache, no augmentation), and the settings to continue from it."""
    runs_dir = tmp_path_factory.mktemp("runs")
    common = {"data_dir": str(tiny_data), "runs_dir": str(runs_dir), "cache_dir": str(runs_dir / "cache")}
    common |= TINY_TRAINING | {"cache_dtype": "float32", "ema_decay": 0.0}
    fit(TrainConfig(**(common | {"run_name": "p1"})), progress=False)
    return common | {"phase1_checkpoint": str(runs_dir / "p1")}


def phase2_config(phase1, **overrides) -> TrainConfig:
    return TrainConfig(**(phase1 | PHASE2 | {"run_name": "p2"} | overrides))


@pytest.mark.parametrize(
    "arch, weights, top",
    [("resnet18", "random", 1), ("resnet18", "random", 2), ("efficientnet-lite0", "random", 1)],
)
def test_the_cut_prefix_and_top_compute_the_whole_forward_pass(arch, weights, top):
    cfg = resolve_encoder_config("tiny-random", scene_arch=arch, scene_weights=weights)
    whole = DualEncoder(cfg)
    split = DualEncoder(cfg, clip_top_blocks=1, scene_top_stages=top).eval()
    images = torch.rand(3, 3, whole.image_size, whole.image_size)
    # within float rounding: attention takes its fused path when nothing needs a gradient
    for a, b in zip(whole(images), split.top(*split.prefix(images)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_only_the_named_blocks_get_gradients_and_their_own_rates(phase1):
    t = build_training(phase2_config(phase1), progress=False)
    try:
        encoders = t.model.encoders
        trained = {n for n, p in encoders.named_parameters() if p.requires_grad}
        assert trained and all(n.startswith(CLIP_TOP + SCENE_TOP) for n in trained)
        assert any(n.startswith(CLIP_TOP[0]) for n in trained) and any(
            n.startswith(SCENE_TOP) for n in trained
        )
        assert not any("resblocks.0" in n or "layer3" in n for n in trained)
        # one step on a batch: gradients on the tops and the heads, none on the frozen rest
        idx, clip, scene = next(t.source.train_batches(torch.arange(16)[None], None))
        out = t.model.heads(clip, scene, cell_ids=t.stepper.step.labels["cell"][idx])
        sum(v.float().sum() for v in out.values() if v.dtype.is_floating_point).backward()
        with_grad = {n for n, p in encoders.named_parameters() if p.grad is not None}
        assert with_grad == trained
        assert all(p.grad is not None for p in t.model.heads.parameters() if p.requires_grad)
        groups = {g["name"]: g for g in t.optimizer.param_groups}
        assert {k: (g["base_lr"], g["weight_decay"]) for k, g in groups.items()} == {
            "heads": (t.cfg.lr, t.cfg.weight_decay),
            "clip": (1e-4, t.cfg.weight_decay_clip),
            "scene": (5e-5, t.cfg.weight_decay_scene),
        }
        names = {id(p): n for n, p in encoders.named_parameters()}
        assert {names[id(p)] for p in groups["clip"]["params"]} == {
            n for n in trained if n.startswith("clip.")
        }
        assert {names[id(p)] for p in groups["scene"]["params"]} == {
            n for n in trained if n.startswith("scene.")
        }
        # batch norm keeps its statistics by default, in the trained stage too; its scale and shift train
        t.model.train()
        assert (
            not encoders.scene.body.layer4[0].bn1.training and not encoders.scene.body.layer3[0].bn1.training
        )
        assert encoders.scene.body.layer4[0].bn1.weight.requires_grad
        assert encoders.clip.body.transformer.resblocks[1].training  # the rest of the top is in train mode
    finally:
        t.close()
    learning = DualEncoder(
        resolve_encoder_config("tiny-random"), clip_top_blocks=1, scene_top_stages=1, top_bn_statistics=True
    )
    learning.train()  # asked for: the trained stage learns its statistics, the frozen ones keep theirs
    assert learning.scene.body.layer4[0].bn1.training and not learning.scene.body.layer3[0].bn1.training


def _loss_and_gradients(t, rows: torch.Tensor):
    """The loss and every trained parameter's gradient of one batch, dropout seeded alike."""
    t.model.train()
    t.optimizer.zero_grad(set_to_none=True)
    idx, clip, scene = next(t.source.train_batches(rows[None], None))
    torch.manual_seed(0)  # after the batch: the image path's transforms draw from the same generator
    labels = t.stepper.step.labels
    out = t.model.heads(clip, scene, cell_ids=labels["cell"][idx], province_ids=labels["province"][idx])
    losses = t.loss_fn(out, labels["province"][idx], labels["lat"][idx], labels["lon"][idx], 1.0)
    losses["total"].backward()
    grads = {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}
    return float(losses["total"].detach()), grads


def test_the_prefix_cached_step_equals_the_image_step(phase1):
    rows = torch.arange(24)
    results = []
    for feature_cache in (True, False):
        t = build_training(
            phase2_config(phase1, feature_cache=feature_cache, run_name=f"c{feature_cache}"), False
        )
        try:
            assert type(t.source).__name__ == ("CachedPrefixes" if feature_cache else "EncodedImages")
            results.append(_loss_and_gradients(t, rows))
        finally:
            t.close()
    (cached_loss, cached), (image_loss, image) = results
    assert cached_loss == pytest.approx(image_loss, rel=1e-5)
    assert set(cached) == set(image) and any(n.startswith("encoders.scene.body.layer4") for n in cached)
    for name in cached:
        torch.testing.assert_close(cached[name], image[name], rtol=1e-4, atol=1e-6, msg=name)


RESUME_SCRIPT = """
import json
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit
fit(TrainConfig.from_dict(json.loads({config!r})), progress=False)
"""


def test_a_phase2_run_killed_mid_epoch_resumes_bit_exactly_and_predicts(phase1, tmp_path):
    settings = {"epochs": 3, "batches_per_epoch": 30, "ema_decay": 0.9}
    reference = phase2_config(phase1, run_name="ref", **settings)
    fit(reference, progress=False)
    resumed = phase2_config(phase1, run_name="killed", resume=True, **settings)
    script = RESUME_SCRIPT.format(config=json.dumps(asdict(resumed)))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first_epoch = RunFolder(resumed.run_dir).last_checkpoint(2)
    deadline = time.time() + 300
    while not first_epoch.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(first_epoch, weights_only=True)["epoch"] < 3, (
        "the run finished before it could be killed"
    )
    fit(resumed, progress=False)

    a = pd.read_csv(reference.run_dir / "losses.csv").drop(columns=["seconds"])
    b = pd.read_csv(resumed.run_dir / "losses.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    final_a, final_b = (
        torch.load(run.run_dir / "checkpoints/phase2/last.pt", weights_only=True)
        for run in (reference, resumed)
    )
    assert final_a["model_state"].keys() == final_b["model_state"].keys()
    for k in final_a["model_state"]:
        assert torch.equal(final_a["model_state"][k], final_b["model_state"][k]), k
    # the checkpoint holds the trained tops and nothing else of the encoders
    encoder_keys = {k for k in final_a["model_state"] if k.startswith("encoders.")}
    assert encoder_keys and all(
        k.removeprefix("encoders.").startswith(CLIP_TOP + SCENE_TOP) for k in encoder_keys
    )
    assert any(k.endswith("layer4.0.bn1.running_mean") for k in encoder_keys)  # trained batch-norm statistics
    # the predictor rebuilds the frozen rest, loads the tops and reproduces the run's own validation
    val = pd.read_csv(reference.run_dir / "val_predictions_best.csv")
    pred = evaluate_run(reference.run_dir, split="val").tables["predictions"]
    np.testing.assert_allclose(pred["pred_lat"], val["pred_lat"], atol=1e-4)
    np.testing.assert_allclose(pred["pred_lon"], val["pred_lon"], atol=1e-4)
    # the out-of-domain index is fitted on the best epoch's trained encoders: validation photos pass it as
    # often as its threshold allows (the 97 % quantile of their own scores, interpolated: with 36 photos, 2 lie
    # above it; one more may cross on the image path's rounding), and recoloured ones, a kind its rule was chosen
    # to catch, do not
    q, n = Predictor.from_run(reference.run_dir).novelty.quantile, len(pred)
    assert pred["out_of_domain"].sum() <= n - 1 - math.floor(q * (n - 1)) + 1
    from geoloc_lib.evaluate.strangers import recoloured

    rng = np.random.default_rng(0)
    strange = []
    images = pd.read_csv(Path(reference.data_dir) / "train.csv").set_index("id")["image"]
    for i, photo_id in enumerate(pred["id"].head(8)):
        with Image.open(Path(reference.data_dir) / images[photo_id]) as photo:
            strange.append(tmp_path / f"recoloured{i}.jpg")
            recoloured(photo.convert("RGB"), rng).save(strange[-1])
    predictor = Predictor.from_run(reference.run_dir)
    flagged = predictor.predict([str(p) for p in strange])["out_of_domain"]
    assert flagged.mean() >= 0.5, (flagged.tolist(), predictor.novelty.signals, predictor.novelty.report)


def test_phase2_refuses_what_it_cannot_start_from(phase1, tmp_path):
    with pytest.raises(ValueError, match="phase1_checkpoint"):
        TrainConfig(**(phase1 | PHASE2 | {"phase1_checkpoint": None}))
    with pytest.raises(ValueError, match="keep freeze_clip and freeze_scene True"):
        phase2_config(phase1, freeze_clip=False, feature_cache=False)
    p0 = TrainConfig(**(phase1 | {"run_name": "p0", "phase": 0, "phase1_checkpoint": None}))
    fit(p0, progress=False)
    attempts = {
        "is a Phase 0 checkpoint": {
            "phase1_checkpoint": str(p0.run_dir / "checkpoints/phase0/phase0_best.pt")
        },
        "its heads differ in \\['proj_dim'\\]": {"proj_dim": 32},
        "data or validation split differ": {"val_seed": 5},
        "no such file": {"phase1_checkpoint": str(tmp_path / "nothing")},
    }
    for message, overrides in attempts.items():
        with pytest.raises(Phase1StartError, match=message):
            build_training(phase2_config(phase1, run_name="refused", **overrides), progress=False)
        assert not (p0.run_dir.parent / "refused" / "config.json").exists()


def _history(medians, offsets, balochistan):
    return [
        {"train": {"loss_offset": o}, "val": {"median_error_km": m, "balochistan_acc": b}}
        for m, o, b in zip(medians, offsets, balochistan, strict=True)
    ]


def test_each_early_stopping_signal_fires_on_its_constructed_history():
    rules = StopRules(30.0, ("balochistan_acc",), 0.05, 3)
    steady = _history([50, 45, 46, 44], [1.0, 0.9, 0.8, 0.7], [40, 38, 35, 33])
    assert stop_reason(rules, steady) is None
    assert stop_reason(rules, []) is None
    lost = _history([50, 45], [1.0, 0.9], [40, 29.9])
    assert "rare province" in stop_reason(rules, lost) and "balochistan 29.9 %" in stop_reason(rules, lost)
    collapsed = _history([50, 45], [1.0, 0.049], [40, 40])
    assert "offset loss collapsed" in stop_reason(rules, collapsed)
    assert stop_reason(rules, _history([50, 45], [1.0, 0.051], [40, 40])) is None
    risen = _history([50, 40, 41, 42, 43], [1.0] * 5, [40] * 5)
    assert "above its best (40.00 km) for 3 epochs" in stop_reason(rules, risen)
    assert stop_reason(rules, risen[:-1]) is None  # two epochs above the best: not yet
    assert stop_reason(rules, _history([50, 40, 41, 39.9, 43], [1.0] * 5, [40] * 5)) is None  # a new best
    off = StopRules(0.0, ("balochistan_acc",), 0.0, 0)
    assert all(stop_reason(off, h) is None for h in (lost, collapsed, risen))


def test_rare_provinces_are_watched_only_when_they_start_above_the_threshold():
    train = pd.DataFrame({"province_id": [0] * 90 + [1] * 6 + [5] * 4})
    val = pd.DataFrame({"province_id": [0] * 20 + [1] * 12 + [5] * 12})
    cfg = TrainConfig(rare_province_share=0.07)
    start = {"punjab_acc": 50.0, "balochistan_acc": 10.0, "sindh_acc": 90.0}
    assert StopRules.of(cfg, train, val, start).watched == ("punjab_acc",)  # Balochistan starts below 30 %


def test_a_stopped_run_logs_why_keeps_its_best_and_stays_stopped_when_resumed(phase1):
    cfg = phase2_config(phase1, run_name="stops", epochs=6, stop_patience=1, stop_offset_collapse=0.999)
    fit(cfg, progress=False)
    log = (cfg.run_dir / "log.txt").read_text()
    assert "early stop after epoch 2: the training offset loss collapsed" in log
    losses = pd.read_csv(cfg.run_dir / "losses.csv")
    assert losses["epoch"].max() == 2
    best = torch.load(cfg.run_dir / "checkpoints/phase2/phase2_best.pt", weights_only=True)
    val = losses[losses["split"] == "val"].set_index("epoch")["median_error_km"]
    assert best["epoch"] == int(val.idxmin())
    fit(TrainConfig(**(asdict(cfg) | {"resume": True})), progress=False)
    assert pd.read_csv(cfg.run_dir / "losses.csv")["epoch"].max() == 2
    assert (cfg.run_dir / "log.txt").read_text().count("early stop after epoch 2") == 2
