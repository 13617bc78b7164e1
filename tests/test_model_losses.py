import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from geoloc_lib.geo.cell_table import CellTable
from geoloc_lib.geo.sphere import haversine_km
from geoloc_lib.model.decode_modes import DecodeConfig
from geoloc_lib.model.decoding import decode, province_prior_shift
from geoloc_lib.model.encoder_config import ENCODER_PRESETS, EncoderConfig
from geoloc_lib.model.encoders import DualEncoder, EncoderWeightsError
from geoloc_lib.model.head_config import HeadConfig
from geoloc_lib.model.heads import MASKED_LOGIT, BatchedGeocellHeads, GeolocModel
from geoloc_lib.model.loss_weights import offset_ramp
from geoloc_lib.model.losses import GeolocLoss, effective_number_weights, soft_target_table
from geoloc_lib.run.checkpoint import load_phase0_weights
from geoloc_lib.run.model import create_phase1_model

SMALL = HeadConfig(proj_dim=32, geocell_hidden=32, small_geocell_hidden=16, dropout=0.0)


def _cells():
    # non-contiguous ids on purpose; Sindh 3 cells in a row 40 km apart, Punjab 2, the rest 1 each
    rows = [
        (10, 0, 24.9, 67.0, 20),
        (12, 0, 24.9, 67.4, 20),
        (15, 0, 24.9, 67.8, 20),
        (30, 1, 31.5, 74.3, 30),
        (31, 1, 30.2, 71.5, 30),
        (40, 2, 34.0, 71.5, 25),
        (50, 3, 33.7, 73.0, 10),
        (60, 4, 35.9, 74.3, 60),
        (70, 5, 30.2, 67.0, 80),
        (80, 6, 34.4, 73.5, 15),
    ]
    return pd.DataFrame(rows, columns=["cell_id", "province_id", "center_lat", "center_lon", "radius_km"])


def test_effective_number_weights_by_hand():
    w = effective_number_weights([1000, 10, 0], beta=0.9)
    e = [(1 - 0.9**1000) / 0.1, (1 - 0.9**10) / 0.1]  # 10.0, 6.513
    raw = [1 / e[0], 1 / e[1]]
    np.testing.assert_allclose(w[:2], np.array(raw) / np.mean(raw))
    assert w[2] == 0 and w[1] > w[0]


def test_soft_targets_properties():
    cells = CellTable(_cells())
    t = soft_target_table(cells)  # [N, Cmax]
    torch.testing.assert_close(t.sum(1), torch.ones(len(t)))
    sindh0 = t[0, :3]  # cell 10: distances 0, ~40, ~81 km, tau 30
    assert sindh0.argmax() == 0 and sindh0[0] > sindh0[1] > sindh0[2] > 0
    d = haversine_km(24.9, 67.0, 24.9, 67.4)
    expected = torch.softmax(torch.tensor([0.0, -d / 30, -2 * d / 30], dtype=torch.float32), 0)
    torch.testing.assert_close(sindh0, expected, atol=2e-3, rtol=0)
    sharper = soft_target_table(cells, [10.0] * 7)[0, :3]
    assert sharper[0] > sindh0[0]  # lower tau -> sharper
    assert (t[3, 2:] == 0).all()  # Punjab has 2 cells: padding gets nothing


def _batch(cells_df, n=12, seed=0):
    rng = np.random.default_rng(seed)
    pick = cells_df.iloc[rng.integers(0, len(cells_df), n)]
    lat = pick["center_lat"].to_numpy() + rng.normal(0, 0.05, n)
    lon = pick["center_lon"].to_numpy() + rng.normal(0, 0.05, n)
    return (
        torch.tensor(pick["province_id"].to_numpy()),
        torch.tensor(pick["cell_id"].to_numpy()),
        torch.tensor(lat, dtype=torch.float32),
        torch.tensor(lon, dtype=torch.float32),
    )


def _model():
    enc = DualEncoder(ENCODER_PRESETS["tiny-random"])
    return GeolocModel(enc, CellTable(_cells()), SMALL)


def test_gradients_reach_heads_not_encoders_and_encoders_stay_eval():
    model = _model()
    loss_fn = GeolocLoss(model.cells, np.ones(7))
    province, cell, lat, lon = _batch(_cells())
    model.train()
    assert not model.encoders.clip.body.training and not model.encoders.scene.body.training
    out = model(torch.rand(len(cell), 3, 64, 64), cell_ids=cell, province_ids=province)
    loss_fn(out, province, lat, lon, offset_weight=1.0)["total"].backward()
    for name, p in model.named_parameters():
        if name.startswith(("encoders.", "heads.input_norm.")):  # frozen, and the fixed standardisation
            assert not p.requires_grad and p.grad is None, name
        elif name.startswith("heads.cell_emb") or name.startswith("heads.province_emb"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_offsets_never_leave_their_bound():
    model = _model()
    with torch.no_grad():  # push the offset head to saturation
        model.heads.offset_out[1].weight.mul_(1e4)
        model.heads.offset_out[1].bias.fill_(1e4)
    province, cell, lat, lon = _batch(_cells(), 40)
    out = model(torch.rand(40, 3, 64, 64), cell_ids=cell, province_ids=province)
    bound = model.cells.offset_bound_deg[out["cell_flat"]]
    assert (out["offsets"].abs() <= bound + 1e-6).all()
    torch.testing.assert_close(out["oracle_coords"], model.cells.center[out["cell_flat"]] + out["offsets"])
    # sindh scale 1.0, radius 20 km -> 20 km north-south = 0.1799 deg
    assert model.cells.offset_bound_deg[0, 0].item() == pytest.approx(20 / 111.195, rel=1e-3)
    assert model.cells.offset_bound_deg[3, 0].item() == pytest.approx(
        30 * 0.6 / 111.195, rel=1e-3
    )  # Punjab 0.6


def test_loss_terms_by_hand():
    cells = CellTable(_cells())
    loss_fn = GeolocLoss(cells, np.ones(7))
    # one photo in cell 50 (ICT, the only ICT cell: soft target is one-hot), exactly 10 km north of its centre
    lat, lon = 33.7 + 10 / 111.195, 73.0
    logits = torch.zeros(1, 7)
    geo = torch.zeros(1, cells.max_cells)
    flat = cells.flat_index(torch.tensor([50]))
    out = {
        "province_logits": logits,
        "routed_geocell_logits": geo,
        "cell_flat": flat,
        "oracle_coords": cells.center[flat],  # offset 0: the prediction is the cell centre
        "aux_coords": torch.tensor([[33.7, 73.0]]),
    }
    terms = loss_fn(
        out, torch.tensor([3]), torch.tensor([lat]), torch.tensor([lon]), offset_weight=offset_ramp(1)
    )
    assert terms["province"].item() == pytest.approx(math.log(7), rel=1e-5)
    assert terms["geocell"].item() == pytest.approx(
        math.log(cells.max_cells), rel=1e-5
    )  # KL(one-hot || uniform)
    assert terms["offset"].item() == pytest.approx(1.0, rel=2e-3)  # 10 km off / 10 km radius
    assert terms["aux"].item() == pytest.approx(0.1, rel=2e-3)  # 10 km / 100 km
    expected = 0.5 * math.log(7) + math.log(cells.max_cells) + 0.2 * 1.0 + 0.1 * 0.1
    assert terms["total"].item() == pytest.approx(expected, rel=2e-3)
    assert [offset_ramp(e) for e in (1, 2, 3, 4, 5, 9)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]


def test_overfitting_a_tiny_batch_reduces_the_loss():
    torch.manual_seed(0)
    model = _model()
    loss_fn = GeolocLoss(model.cells, np.ones(7))
    province, cell, lat, lon = _batch(_cells(), 16, seed=1)
    clip = torch.randn(16, 64)
    scene = torch.randn(16, 512)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    first = None
    for _ in range(300):
        opt.zero_grad()
        terms = loss_fn(model.heads(clip, scene, cell, province), province, lat, lon, offset_weight=1.0)
        terms["total"].backward()
        opt.step()
        first = first if first is not None else {k: v.item() for k, v in terms.items()}
    last = {k: v.item() for k, v in terms.items()}
    assert last["total"] < 0.2 * first["total"]
    for k in ("province", "geocell", "offset", "aux"):
        assert last[k] < first[k], k


def test_inference_without_labels():
    model = _model().eval()
    out = model.heads(torch.randn(9, 64), torch.randn(9, 512))
    assert "offsets" not in out
    pred = decode(model.heads, out, DecodeConfig())
    torch.testing.assert_close(pred["province_probs"].sum(1), torch.ones(9))
    assert (pred["hyp_prob"] >= 0).all() and (pred["hyp_prob"].sum(1) <= 1 + 1e-5).all()
    assert set(pred["cell_id"].tolist()) <= set(_cells()["cell_id"])
    own = model.cells.province[model.cells.flat_index(pred["hyp_cell_id"])]
    assert (own == pred["hyp_province"])[
        pred["hyp_valid"]
    ].all()  # every hypothesis' cell belongs to its province
    assert ((pred["lat"] > 23) & (pred["lat"] < 38) & (pred["lon"] > 60) & (pred["lon"] < 79)).all()


@pytest.mark.parametrize("mode", ["hierarchical", "joint", "mixture"])
def test_decoding_reports_the_province_of_the_predicted_cell(mode):
    model = _model().eval()
    torch.manual_seed(3)
    out = model.heads(torch.randn(64, 64), torch.randn(64, 512))
    out["province_logits"] = torch.randn(64, 7) * 3  # spread the province choice over all seven
    pred = decode(model.heads, out, DecodeConfig(mode=mode, top_provinces=3, top_cells=5))
    cells = model.cells
    assert (cells.province[cells.flat_index(pred["cell_id"])] == pred["province"]).all()
    # padding: Sindh has 3 cells and the other provinces 1 or 2, so top_cells=5 leaves empty slots
    hyp_province_of_cell = cells.province[cells.flat_index(pred["hyp_cell_id"])]
    valid = pred["hyp_valid"]
    assert (hyp_province_of_cell[valid] == pred["hyp_province"][valid]).all()
    assert (pred["hyp_prob"][~valid] == 0).all() and valid.sum(1).max() <= 3 + 2 + 2
    n_valid = valid.view(64, 3, -1).sum(-1)  # hypotheses per top province = its number of cells
    top = pred["province_probs"].topk(3, -1).indices
    assert (n_valid == cells.n_cells[top]).all()


def test_hierarchical_decoding_stays_in_the_most_probable_province():
    model = _model().eval()
    out = model.heads(torch.randn(4, 64), torch.randn(4, 512))
    out["province_logits"] = torch.tensor([[2.0, 1.9, -9, -9, -9, -9, -9]]).repeat(4, 1)  # Sindh, just
    out["geocell_logits"] = torch.full_like(out["geocell_logits"], -9.0)
    out["geocell_logits"][:, 0, :3] = 0.0  # Sindh spreads over its 3 cells: 1/3 each
    out["geocell_logits"][:, 1, 0] = 9.0  # Punjab is sure of its first cell
    hierarchical = decode(model.heads, out, DecodeConfig(mode="hierarchical"))
    joint = decode(model.heads, out, DecodeConfig(mode="joint"))
    assert (hierarchical["province"] == 0).all() and (joint["province"] == 1).all()
    assert (joint["cell_id"] == 30).all()  # p = 0.48 x 1.0 beats 0.52 x 1/3


def test_prior_correction_moves_the_province_towards_the_data_prior():
    model = _model().eval()
    out = model.heads(torch.randn(2, 64), torch.randn(2, 512))
    out["province_logits"] = torch.zeros(2, 7)  # indifferent under the training prior
    # data: Sindh 70 %, the rest 5 % each; sampler: Sindh 16/64, the rest 8/64; equal loss weights
    shift = torch.tensor(
        province_prior_shift([70, 5, 5, 5, 5, 5, 5], [16, 8, 8, 8, 8, 8, 8], np.ones(7)), dtype=torch.float32
    )
    # p(y | x) scales by data prior / training prior: Sindh 0.70 / 0.25 = 2.8, the others 0.05 / 0.125 = 0.4
    expected = torch.tensor([2.8, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]) / 5.2
    full = decode(model.heads, out, DecodeConfig(prior_correction=1.0), shift)
    torch.testing.assert_close(full["province_probs"][0], expected)
    off = decode(model.heads, out, DecodeConfig(prior_correction=0.0), shift)
    torch.testing.assert_close(off["province_probs"][0], torch.full((7,), 1 / 7))
    # a province with no training rows gets no probability, whatever the correction
    shift[6] = -torch.inf
    assert (decode(model.heads, out, DecodeConfig(), shift)["province_probs"][:, 6] == 0).all()


def test_mixture_equals_argmax_when_one_hypothesis_holds_all_probability():
    model = _model().eval()
    out = model.heads(torch.randn(4, 64), torch.randn(4, 512))
    out["province_logits"] = torch.full((4, 7), -1e4)
    out["province_logits"][:, 1] = 0
    out["geocell_logits"] = out["geocell_logits"].clone()
    out["geocell_logits"][:, 1, 0] = 1e4
    pred = decode(model.heads, out, DecodeConfig(mode="mixture"))
    torch.testing.assert_close(pred["mixture_lat"], pred["joint_lat"])
    torch.testing.assert_close(pred["mixture_lon"], pred["joint_lon"])
    assert (pred["cell_id"] == 30).all()


def test_phase0_loading_report(tmp_path):
    model = _model()
    state = {
        f"module.{k}": v.clone() + 1 for k, v in model.state_dict().items() if k.startswith("heads.gate.")
    }
    state["module.something.else"] = torch.zeros(1)
    torch.save({"model_state": state}, tmp_path / "p0.pt")
    fresh = _model()
    report = load_phase0_weights(fresh, tmp_path / "p0.pt")
    assert sorted(report.loaded) == ["heads.gate.bias", "heads.gate.weight"]
    assert report.unexpected == ["something.else"]
    assert "heads.province_head.0.weight" in report.missing
    torch.testing.assert_close(fresh.heads.gate.weight, model.heads.gate.weight + 1)
    torch.save({"model_state": {"heads.gate.weight": torch.zeros(3, 3)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_phase0_weights(fresh, tmp_path / "bad.pt")


def test_missing_real_weights_fail_fast(tmp_path):
    with pytest.raises(EncoderWeightsError, match="local weights file"):
        DualEncoder(EncoderConfig("geoloc-tiny-vit", "openai", "resnet18", "random"))
    with pytest.raises(EncoderWeightsError, match="Places365"):
        DualEncoder(
            EncoderConfig("geoloc-tiny-vit", "random", "resnet18", f"places365:{tmp_path}/none.pth.tar")
        )


def test_places365_checkpoint_with_module_prefix_loads(tmp_path):
    import torchvision

    torch.manual_seed(5)
    net = torchvision.models.resnet18(num_classes=365)
    ckpt = {
        "epoch": 1,
        "arch": "resnet18",
        "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
    }
    torch.save(ckpt, tmp_path / "r18_places365.pth.tar")
    enc = DualEncoder(
        EncoderConfig("geoloc-tiny-vit", "random", "resnet18", f"places365:{tmp_path}/r18_places365.pth.tar")
    )
    torch.testing.assert_close(enc.scene.body.conv1.weight, net.conv1.weight)


def test_create_phase1_model_from_csv(tiny_data):
    model = create_phase1_model(tiny_data / "cell_metadata.csv", encoder="tiny-random")
    assert model.cells.num_cells == len(pd.read_csv(tiny_data / "cell_metadata.csv"))
    counts = {r["component"]: r for r in model.component_parameter_counts()}
    assert counts["CLIP encoder"]["trainable"] == 0 and counts["geocell heads"]["frozen"] == 0


def test_batched_geocell_heads_equal_a_loop_over_provinces():
    cells = CellTable(_cells())
    cfg = replace(SMALL, small_province_cells=3)  # Sindh (3 cells) gets 32 hidden units, the rest 16
    heads = BatchedGeocellHeads(32, 8, cells, cfg).eval()
    assert heads.capacity.tolist() == [32] + [16] * 6
    fused, province_emb = torch.randn(5, 32), torch.randn(7, 8)
    logits = heads(fused, province_emb, cells.cell_mask)  # [5, 7, C]
    for p in range(7):  # the seed's way: each province's own MLP, photo by photo
        w1, b1, w2, b2 = heads.province_mlp(p)
        n = int(cells.n_cells[p])
        for b in range(5):
            expected = F.gelu(torch.cat([fused[b], province_emb[p]]) @ w1 + b1) @ w2 + b2
            torch.testing.assert_close(logits[b, p, :n], expected[:n], atol=1e-5, rtol=1e-5)
            assert (logits[b, p, n:] == MASKED_LOGIT).all()


def test_a_local_open_clip_weights_file_is_loaded(tmp_path):
    import open_clip

    with torch.random.fork_rng():
        torch.manual_seed(7)
        reference = open_clip.create_model("geoloc-tiny-vit", pretrained=None)
    path = tmp_path / "open_clip_model.pt"
    torch.save({"state_dict": reference.state_dict()}, path)  # the layout open_clip's own checkpoints use
    enc = DualEncoder(EncoderConfig("geoloc-tiny-vit", str(path), "resnet18", "random"))
    for name, value in reference.visual.state_dict().items():
        torch.testing.assert_close(enc.clip.body.state_dict()[name], value)
    random_init = DualEncoder(ENCODER_PRESETS["tiny-random"])
    assert not torch.equal(random_init.clip.body.conv1.weight, enc.clip.body.conv1.weight)


@pytest.mark.parametrize(
    "config",
    [
        EncoderConfig("geoloc-tiny-vit", "/nowhere/open_clip_model.safetensors", "resnet18", "random"),
        EncoderConfig("local-dir:/nowhere/clip-folder", "openai", "resnet18", "random"),
        EncoderConfig(
            "geoloc-tiny-vit", "random", "resnet18", "places365:/nowhere/resnet18_places365.pth.tar"
        ),
    ],
    ids=["clip-file", "clip-folder", "places365"],
)
def test_a_wrong_weights_path_says_file_not_found(config):
    with pytest.raises(EncoderWeightsError, match="file not found: /nowhere/") as err:
        DualEncoder(config)
    assert "offline" not in str(err.value)
