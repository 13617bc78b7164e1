"""The phase table and the checkpoint schema: each phase's parts, weights and selection in one place; every
checkpoint read through one versioned schema."""

from dataclasses import replace

import pytest
import torch

from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.model.factory import trainable_parameters
from geoloc_lib.run.checkpoint import CHECKPOINT_VERSION, Checkpoint, CheckpointVersionError
from geoloc_lib.run.folder import RunFolder
from geoloc_lib.run.model import create_phase1_model
from geoloc_lib.run.phases import PHASES
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit


def test_phase0_trains_exactly_the_projections_gate_and_province_head(tiny_data):
    model = create_phase1_model(tiny_data / "cell_metadata.csv")
    heads = model.heads
    expected = {
        id(p)
        for module in (heads.input_norm, heads.clip_proj, heads.scene_proj, heads.gate, heads.province_head)
        for p in module.parameters()
        if p.requires_grad
    }
    assert {id(p) for p in trainable_parameters(model, PHASES[0].trains)} == expected
    everything = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in trainable_parameters(model, PHASES[1].trains)} == everything
    assert len(everything) > len(expected)


def test_each_phase_selects_and_weighs_as_documented():
    cfg = TrainConfig(loss_province=0.5, loss_geocell=1.0, loss_offset=1.0, loss_aux=0.1)
    row = {"province_balanced_acc": 81.5, "median_error_km": 42.0}
    assert PHASES[0].selection_metric(row) == pytest.approx(18.5)
    assert PHASES[1].selection_metric(row) == 42.0
    w0, w1 = PHASES[0].loss_weights(cfg), PHASES[1].loss_weights(cfg)
    assert (w0.province, w0.geocell, w0.offset, w0.aux) == (1.0, 0.0, 0.0, 0.0)
    assert (w1.province, w1.geocell, w1.offset, w1.aux) == (0.5, 1.0, 1.0, 0.1)


@pytest.fixture
def finished(tiny_config):
    cfg = tiny_config(batches_per_epoch=4)
    fit(cfg, progress=False)
    return cfg


def test_a_checkpoint_round_trips_through_the_schema_with_the_specifications_fields(finished):
    path = RunFolder(finished.run_dir).best_checkpoint(1)
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == CHECKPOINT_VERSION
    for key in ("model_state", "optimizer_state", "epoch", "losses", "province_accuracies", "median_error"):
        assert key in raw  # the specification's contents
    checkpoint = Checkpoint.load(path)
    assert raw["median_error"] == raw["metrics"]["val"]["median_error_km"] == checkpoint.median_error
    again = checkpoint.to_dict()
    assert sorted(again) == sorted(raw)
    for key, value in raw["model_state"].items():
        assert torch.equal(again["model_state"][key], value)


def test_a_checkpoint_of_another_version_is_refused_with_a_message_to_retrain(finished):
    folder = RunFolder(finished.run_dir)
    for path in folder.checkpoints(1).glob("*.pt"):
        raw = torch.load(path, weights_only=True)
        raw.pop("version", None)  # as the checkpoints before the schema (best and last share a file)
        torch.save(raw, path)
    with pytest.raises(CheckpointVersionError, match="version 1 checkpoint.*Train the run again"):
        Predictor.from_run(finished.run_dir)
    with pytest.raises(CheckpointVersionError, match="version 1 checkpoint"):
        fit(replace(finished, epochs=2, resume=True), progress=False)
