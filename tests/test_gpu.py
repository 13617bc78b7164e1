"""Checks of the CUDA-only paths (CUDA graph, bf16 autocast). Skipped where there is no GPU, as in CI."""

import pytest
import torch
from conftest import tiny_config

from geoloc_lib.train import Trainer, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _trained(tiny_data, runs, cuda_graph):
    # one cached view and no dropout: the graph (default CUDA generator) and eager (an explicit
    # generator) then draw the same inputs, so their updates can be compared
    cfg = tiny_config(
        tiny_data,
        runs,
        run_name=f"graph-{cuda_graph}",
        device="cuda",
        cuda_graph=cuda_graph,
        cache_views=1,
        dropout=0.0,
        batches_per_epoch=12,
        cache_dtype="float32",
    )
    trainer = Trainer(cfg, progress=False)
    trainer.prepare_features()
    terms = [trainer.train_epoch(epoch)[0]["loss_total"] for epoch in (1, 2)]
    return trainer, terms


def test_cuda_graph_step_matches_the_eager_step(tiny_data, tmp_path):
    graphed, graph_terms = _trained(tiny_data, tmp_path, cuda_graph=True)
    eager, eager_terms = _trained(tiny_data, tmp_path, cuda_graph=False)
    assert graphed._graph is not None, "capture fell back to eager: see log.txt"
    assert graph_terms == pytest.approx(eager_terms, rel=2e-2)
    for a, b in zip(graphed.model.heads.parameters(), eager.model.heads.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)  # bf16 matmuls in both


def test_cuda_run_writes_outputs_and_resumes(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path, device="cuda", cuda_graph=True, epochs=1, batches_per_epoch=6)
    train(cfg, progress=False)
    resumed = tiny_config(
        tiny_data, tmp_path, device="cuda", cuda_graph=True, epochs=2, batches_per_epoch=6, resume=True
    )
    train(resumed, progress=False)
    log = (cfg.run_dir / "log.txt").read_text()
    assert "cuda" in log and "CUDA graph" in log and "capture failed" not in log
    assert "Resuming" in log
