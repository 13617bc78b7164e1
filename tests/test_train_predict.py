import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from geoloc_lib.data.contract import load_dataset
from geoloc_lib.data.feature_cache import Extraction, extract_features, load_or_extract
from geoloc_lib.data.photos import PhotoDataset
from geoloc_lib.data.transforms import AUGMENT_PRESETS, AugmentConfig, train_transform
from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.inference.run_evaluation import evaluate_run
from geoloc_lib.model.encoder_config import resolve_encoder_config
from geoloc_lib.model.encoders import DualEncoder, EncoderFingerprintError
from geoloc_lib.model.factory import CheckpointMismatchError
from geoloc_lib.run.folder import LOSSES_CSV_COLUMNS, RunFolder
from geoloc_lib.train.loop import NonFiniteLossError, fit
from geoloc_lib.train.setup import build_training
from geoloc_lib.train.step import TrainingStateSnapshot

SEED_CSV_COLUMNS = (
    "epoch,split,loss_total,loss_province,loss_geocell,loss_offset,loss_aux,"
    "median_error_km,mean_error_km,p90_error_km,"
    "sindh_acc,punjab_acc,kpk_acc,ict_acc,gb_acc,balochistan_acc,ajk_acc"
).split(",")


def test_one_epoch_writes_every_output(tiny_config):
    cfg = tiny_config(epochs=1)
    result = fit(cfg, progress=False)
    run = cfg.run_dir
    assert result.best_epoch == 1 and result.best_metric == pytest.approx(result.best_val["median_error_km"])
    for name in (
        "config.json",
        "run_info.json",
        "log.txt",
        "losses.csv",
        "val_predictions.csv",
        "val_predictions_best.csv",
        "checkpoints/phase1/phase1_epoch_1.pt",
        "checkpoints/phase1/phase1_best.pt",
        "checkpoints/phase1/last.pt",
    ):
        assert (run / name).is_file(), name
    header = (run / "losses.csv").read_text().splitlines()[0].split(",")
    assert header[: len(SEED_CSV_COLUMNS)] == SEED_CSV_COLUMNS and header == LOSSES_CSV_COLUMNS
    # exactly the config, with the Phase 1 start it chose: no Phase 0 run is under runs_dir, so none
    recorded = replace(cfg, phase0_checkpoint="")
    assert json.loads((run / "config.json").read_text()) == asdict(recorded)
    assert RunFolder(run).read_config() == recorded
    info = json.loads((run / "run_info.json").read_text())
    assert info["device"] == "cpu" and info["cells"]["num_cells"] > 0 and info["encoder_fingerprint"]
    losses = pd.read_csv(run / "losses.csv")
    assert losses[["epoch", "split"]].values.tolist() == [[1, "train"], [1, "val"]]
    ckpt = torch.load(run / "checkpoints/phase1/phase1_best.pt", weights_only=True)
    for key in ("model_state", "optimizer_state", "epoch", "losses", "province_accuracies", "median_error"):
        assert key in ckpt
    assert not any(k.startswith("encoders.") for k in ckpt["model_state"])  # frozen encoders are not stored
    log = (run / "log.txt").read_text()
    assert "Epoch 1/1:" in log and "Val Error:   median=" in log
    with pytest.raises(FileExistsError, match="resume=True"):
        fit(cfg, progress=False)


def test_predictor_matches_training_metrics_and_rejects_other_cells(tiny_data, tiny_copy, tiny_config):
    cfg = tiny_config(epochs=1, cache_dtype="float32")
    fit(cfg, progress=False)
    val = pd.read_csv(cfg.run_dir / "val_predictions_best.csv")
    tables = evaluate_run(cfg.run_dir, split="val").tables
    pred = tables["predictions"]
    np.testing.assert_allclose(pred["pred_lat"], val["pred_lat"], atol=1e-4)
    np.testing.assert_allclose(pred["pred_lon"], val["pred_lon"], atol=1e-4)
    np.testing.assert_allclose(pred["error_km"].median(), val["error_km"].median(), atol=0.05)
    assert ["hierarchical", "joint", "mixture"] == list(tables["summary"].columns)
    single = Predictor.from_run(cfg.run_dir).predict(
        [pred_path := str(tiny_data / "images" / "pk000000.jpg")]
    )
    assert single["image"].iloc[0] == pred_path
    hypotheses = single["hypotheses"].iloc[0]
    cells = pd.read_csv(tiny_data / "cell_metadata.csv").set_index("cell_id")
    assert 1 <= len(hypotheses) <= 10 and all(h["prob"] > 0 for h in hypotheses)
    assert all(cells.loc[h["cell_id"], "province"] == h["province"] for h in hypotheses)  # no padding slots
    # hypotheses come most probable first, so the first is the joint prediction itself
    many = Predictor.from_run(cfg.run_dir).predict(
        sorted(str(p) for p in (tiny_data / "images").glob("*.jpg"))[:40], mode="joint"
    )
    for _, row in many.iterrows():
        probs = [h["prob"] for h in row["hypotheses"]]
        assert probs == sorted(probs, reverse=True)
        first = row["hypotheses"][0]
        assert first["province"] == row["province"]
        np.testing.assert_allclose([first["lat"], first["lon"]], [row["lat"], row["lon"]], atol=1e-6)
    # a checkpoint used with other geocells fails clearly
    cells = pd.read_csv(tiny_copy / "cell_metadata.csv")
    cells.loc[0, "center_lat"] += 0.5
    cells.to_csv(tiny_copy / "cell_metadata.csv", index=False)
    with pytest.raises(CheckpointMismatchError, match="other geocells"):
        Predictor.from_checkpoint(
            cfg.run_dir / "checkpoints/phase1/phase1_best.pt", tiny_copy / "cell_metadata.csv"
        )


def test_cached_and_image_paths_give_the_same_loss(tiny_config):
    # augmented views: the image path must reproduce the very views the cache holds
    cfg = tiny_config(cache_views=1, cache_dtype="float32", augment="strong")
    t = build_training(cfg, progress=False)
    idx = torch.arange(0, 24)
    split = t.data.train
    transform = train_transform(t.model.encoders.image_size, AUGMENT_PRESETS["strong"])
    photos = PhotoDataset(split, transform, views=1, seed=cfg.seed)
    images = torch.stack([photos.load(int(i), view=0) for i in idx])  # the very views the cache holds
    province = torch.as_tensor(split["province_id"].to_numpy()[idx])
    cell = torch.as_tensor(split["cell_id"].to_numpy()[idx])
    lat = torch.as_tensor(split["latitude"].to_numpy(np.float32)[idx])
    lon = torch.as_tensor(split["longitude"].to_numpy(np.float32)[idx])
    t.model.eval()
    with torch.no_grad():
        through_encoders = t.model(images, cell_ids=cell, province_ids=province)
        cached = t.model.heads(
            t.source.train["clip"][0, idx],
            t.source.train["scene"][0, idx],
            cell_ids=cell,
            province_ids=province,
        )
        a = t.loss_fn(through_encoders, province, lat, lon, offset_weight=0.6)
        b = t.loss_fn(cached, province, lat, lon, offset_weight=0.6)
    for k in ("total", "province", "geocell", "offset", "aux"):
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-4, abs=1e-5), k


def test_the_image_path_trains_as_the_cached_path_does(tiny_config, tmp_path):
    """Images through the encoders at every step and cached features are the same model: with augmentation
    off, the same seed gives the same losses (up to the cache's fp16 rounding)."""
    frames = []
    for cached in (True, False):
        cfg = tiny_config(
            runs_dir=tmp_path / str(cached), feature_cache=cached, epochs=2, batches_per_epoch=3
        )
        fit(cfg, progress=False)
        frames.append(pd.read_csv(cfg.run_dir / "losses.csv"))
    cached, literal = frames
    assert literal["epoch"].tolist() == [1, 1, 2, 2]
    for column in ("loss_total", "loss_province", "loss_geocell"):
        np.testing.assert_allclose(literal[column], cached[column], rtol=2e-2, atol=1e-3, err_msg=column)
    # predictions without dropout: the same model places photos alike; fp16 features can move one photo of the
    # 30-odd validation photos to a neighbouring cell, which shifts the median by up to a few per cent
    val = literal["split"] == "val"
    np.testing.assert_allclose(
        literal.loc[val, "median_error_km"], cached.loc[val, "median_error_km"], rtol=2e-2
    )


def test_non_finite_loss_stops_with_batch_and_terms(tiny_config):
    cfg = tiny_config(epochs=2, lr=1e30)
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, batch \d+: total=") as err:
        fit(cfg, progress=False)
    # it fails in epoch 1, before any checkpoint exists: the message must not name a last.pt
    assert "no epoch was committed yet" in str(err.value) and "last.pt" not in str(err.value)


RESUME_SCRIPT = """
import json
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit
fit(TrainConfig.from_dict(json.loads({config!r})), progress=False)
"""


def test_killed_run_resumes_to_the_same_result(tiny_config, tmp_path):
    reference = tiny_config(runs_dir=tmp_path / "ref", epochs=4, batches_per_epoch=40)
    fit(reference, progress=False)

    resumed = tiny_config(runs_dir=tmp_path / "killed", epochs=4, batches_per_epoch=40, resume=True)
    script = RESUME_SCRIPT.format(config=json.dumps(asdict(resumed)))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first_epoch = RunFolder(resumed.run_dir).last_checkpoint(1)  # written after epoch 1 finishes
    deadline = time.time() + 300
    while not first_epoch.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = torch.load(first_epoch, weights_only=True)
    assert last["epoch"] < 4, "the run finished before it could be killed"

    fit(resumed, progress=False)
    a = pd.read_csv(reference.run_dir / "losses.csv").drop(columns=["seconds"])
    b = pd.read_csv(resumed.run_dir / "losses.csv").drop(columns=["seconds"])
    assert (
        b[["epoch", "split"]].values.tolist() == a[["epoch", "split"]].values.tolist()
    )  # no duplicates, no gaps
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=1e-4)
    final_a = torch.load(reference.run_dir / "checkpoints/phase1/last.pt", weights_only=True)["model_state"]
    final_b = torch.load(resumed.run_dir / "checkpoints/phase1/last.pt", weights_only=True)["model_state"]
    for k in final_a:
        torch.testing.assert_close(final_a[k], final_b[k], atol=1e-5, rtol=1e-4)
    assert "Resuming" in (resumed.run_dir / "log.txt").read_text()


def _resnet18_weights(path, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def test_changed_encoder_weights_are_refused(tiny_config, tmp_path):
    weights = tmp_path / "scene.pth"
    _resnet18_weights(weights, seed=1)
    cfg = tiny_config(batches_per_epoch=4, scene_weights=f"places365:{weights}")
    fit(cfg, progress=False)
    Predictor.from_run(cfg.run_dir)  # same weights: accepted
    _resnet18_weights(weights, seed=2)  # the file changes after training
    with pytest.raises(EncoderFingerprintError, match="was trained with"):
        Predictor.from_run(cfg.run_dir)
    with pytest.raises(EncoderFingerprintError, match="was trained with"):
        fit(replace(cfg, epochs=2, resume=True), progress=False)


def test_unfrozen_encoder_is_trained_saved_and_restored(tiny_config):
    with pytest.raises(ValueError, match="cannot be cached"):
        tiny_config(freeze_scene=False)
    cfg = tiny_config(freeze_scene=False, feature_cache=False, batches_per_epoch=2)
    fit(cfg, progress=False)
    state = torch.load(cfg.run_dir / "checkpoints/phase1/phase1_best.pt", weights_only=True)["model_state"]
    initial = build_training(replace(cfg, run_name="fresh"), progress=False).model.state_dict()
    scene_keys = [k for k in state if k.startswith("encoders.scene.")]
    assert scene_keys and not any(k.startswith("encoders.clip.") for k in state)  # only the unfrozen one
    assert any(not torch.equal(state[k], initial[k]) for k in scene_keys)  # it was trained
    # the predictor restores the trained scene CNN: it reproduces the validation predictions
    val = pd.read_csv(cfg.run_dir / "val_predictions_best.csv")
    pred = evaluate_run(cfg.run_dir, split="val").predictions
    np.testing.assert_allclose(pred["pred_lat"], val["pred_lat"], atol=1e-4)
    np.testing.assert_allclose(pred["pred_lon"], val["pred_lon"], atol=1e-4)


def test_unreadable_feature_cache_is_rebuilt(tiny_config):
    first = build_training(tiny_config(run_name="a"), progress=False)
    for path in (first.folder.root.parent / "cache").glob("*.pt"):
        path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    second = build_training(tiny_config(run_name="b"), progress=False)
    assert "unreadable" in second.folder.log.read_text()
    torch.testing.assert_close(first.source.train["clip"], second.source.train["clip"])


EXTRACT_SCRIPT = """
import torch
from geoloc_lib.data.contract import load_dataset
from geoloc_lib.model.encoder_config import resolve_encoder_config
from geoloc_lib.model.encoders import DualEncoder
from geoloc_lib.data.feature_cache import Extraction, load_or_extract
from geoloc_lib.data.photos import PhotoDataset
from geoloc_lib.data.transforms import AugmentConfig, train_transform
torch.set_num_threads(1)
encoders = DualEncoder(resolve_encoder_config("tiny-random"))
split = load_dataset({data!r}, image_check="none").train
dataset = PhotoDataset(split, train_transform(encoders.image_size, AugmentConfig()), views=2, seed=0)
how = Extraction(encoders, torch.device("cpu"), batch_size=16, num_workers=0, flush_seconds=0)
load_or_extract({cache!r}, "key", how, dataset)
"""


def test_killed_feature_extraction_resumes_from_its_shards(tiny_data, tmp_path):
    cache = tmp_path / "cache"
    script = EXTRACT_SCRIPT.format(data=str(tiny_data), cache=str(cache))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    parts = cache / "key.parts"
    deadline = time.time() + 120
    while len(list(parts.glob("*.pt"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cache / "key.pt").exists(), "the extraction finished before it could be killed"

    encoders = DualEncoder(resolve_encoder_config("tiny-random"))
    split = load_dataset(tiny_data, image_check="none").train
    dataset = PhotoDataset(split, train_transform(encoders.image_size, AugmentConfig()), views=2, seed=0)
    messages = []
    how = Extraction(encoders, torch.device("cpu"), batch_size=16, num_workers=0, log=messages.append)
    resumed = load_or_extract(cache, "key", how, dataset)
    done = int(messages[0].split(" at ")[1].split("/")[0])
    assert 0 < done < 2 * len(split), messages
    assert (cache / "key.pt").is_file() and not parts.exists()  # shards go once the cache is whole
    reference = extract_features(how, dataset)
    for name in ("clip", "scene"):
        torch.testing.assert_close(resumed[name], reference[name], atol=2e-3, rtol=2e-3)


def _run_steps(t, n, seed=None):
    if seed is not None:
        torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(0 if seed is None else seed)  # view choice
    batches = torch.as_tensor(t.sampler.epoch_batches(1))
    for idx in batches[:n]:
        t.optimizer.zero_grad(set_to_none=True)
        t.stepper.step(idx, *t.source.gather(idx, generator), torch.tensor(1.0))


def _optimizer_tensors(optimizer):
    return [v.clone() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]


def test_graph_warm_up_snapshot_leaves_no_trace(tiny_config):
    # the CUDA-graph stepper runs warm-up steps before capture and undoes them with this snapshot
    def training(name):
        return build_training(tiny_config(run_name=name, cache_views=1), progress=False)

    warmed, plain = training("warmed"), training("plain")
    snapshot = TrainingStateSnapshot(warmed.optimizer)  # a fresh run: no optimizer state yet
    _run_steps(warmed, 3)
    snapshot.restore()
    _run_steps(warmed, 4, seed=7)
    _run_steps(plain, 4, seed=7)
    for a, b in zip(warmed.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)

    # a resumed run: the loaded Adam moments and step counts come back, not zeros
    params = [p.detach().clone() for p in warmed.model.parameters()]
    state = _optimizer_tensors(warmed.optimizer)
    snapshot = TrainingStateSnapshot(warmed.optimizer)
    _run_steps(warmed, 2)
    snapshot.restore()
    for a, b in zip(warmed.model.parameters(), params, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(_optimizer_tensors(warmed.optimizer), state, strict=True):
        torch.testing.assert_close(a, b)
    assert any(bool((s != 0).any()) for s in state)


@pytest.mark.parametrize("augment", ["none", "strong"])
def test_decoding_on_the_device_matches_decoding_in_the_workers(tiny_data, augment):
    # the GPU path (read in workers, decode and transform on the device) run on the CPU, where
    # torchvision's decoder and Pillow's give the same pixels: the features must agree
    from geoloc_lib.data.transforms import AUGMENT_PRESETS, eval_transform

    encoders = DualEncoder(resolve_encoder_config("tiny-random"))
    split = load_dataset(tiny_data, image_check="none").train.head(40)
    transform = (
        train_transform(encoders.image_size, AUGMENT_PRESETS[augment])
        if augment != "none"
        else eval_transform(encoders.image_size)
    )
    dataset = PhotoDataset(split, transform, views=2, seed=3)
    how = Extraction(encoders, torch.device("cpu"), batch_size=16, num_workers=0, dtype=torch.float32)
    in_workers = extract_features(how, dataset)
    on_device = extract_features(replace(how, decode_on_device=True), dataset)
    for name in ("clip", "scene"):
        torch.testing.assert_close(on_device[name], in_workers[name], atol=1e-5, rtol=1e-5)
