"""Checks of the CUDA-only paths (CUDA graph, bf16 autocast). Skipped where there is no GPU, as in CI."""

import pytest
import torch

from geoloc_lib.train.loop import fit, train_one_epoch
from geoloc_lib.train.setup import build_training
from geoloc_lib.train.step import GraphStepper

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _trained(tiny_config, cuda_graph):
    # one cached view and no dropout: the graph (default CUDA generator) and eager (an explicit
    # generator) then draw the same inputs, so their updates can be compared
    cfg = tiny_config(
        run_name=f"graph-{cuda_graph}",
        device="cuda",
        cuda_graph=cuda_graph,
        cache_views=1,
        dropout=0.0,
        batches_per_epoch=12,
        cache_dtype="float32",
    )
    training = build_training(cfg, progress=False)
    terms = [train_one_epoch(training, epoch)[0]["loss_total"] for epoch in (1, 2)]
    return training, terms


def test_cuda_graph_step_matches_the_eager_step(tiny_config):
    graphed, graph_terms = _trained(tiny_config, cuda_graph=True)
    eager, eager_terms = _trained(tiny_config, cuda_graph=False)
    assert isinstance(graphed.stepper, GraphStepper), "capture fell back to eager: see log.txt"
    assert graph_terms == pytest.approx(eager_terms, rel=2e-2)
    for a, b in zip(graphed.model.heads.parameters(), eager.model.heads.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)  # bf16 matmuls in both


def test_cuda_run_writes_outputs_and_resumes(tiny_config):
    cfg = tiny_config(device="cuda", cuda_graph=True, epochs=1, batches_per_epoch=6)
    fit(cfg, progress=False)
    fit(
        tiny_config(device="cuda", cuda_graph=True, epochs=2, batches_per_epoch=6, resume=True),
        progress=False,
    )
    log = (cfg.run_dir / "log.txt").read_text()
    assert "cuda" in log and "CUDA graph" in log and "capture failed" not in log
    assert "Resuming" in log
