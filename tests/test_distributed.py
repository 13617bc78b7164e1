"""torchrun on the CPU (gloo, 2 processes): a sharded extraction and a data-parallel training step
give what one process gives."""

import os
import subprocess
import sys
from dataclasses import asdict

import torch


def _launch(args, processes=1, tmp_path=None):
    """Run a module or script in `processes` processes (torchrun) or in one (plain python)."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    result = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_sharded_extraction_writes_the_single_process_cache(tiny_data, tmp_path):
    settings = [
        f"data_dir={tiny_data}",
        "augment=strong",
        "cache_views=2",
        "eval_batch_size=16",
        "num_workers=0",
    ]

    def extract(cache, processes):
        args = ["-m", "geoloc_lib.extract"]
        for setting in [*settings, f"cache_dir={cache}"]:
            args += ["--set", setting]
        _launch(args, processes)

    extract(tmp_path / "one", 1)
    extract(tmp_path / "two", 2)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(files) == 4 and files == sorted(p.name for p in (tmp_path / "two").iterdir())  # no shards left
    for name in files:
        one = torch.load(tmp_path / "one" / name, weights_only=True)
        two = torch.load(tmp_path / "two" / name, weights_only=True)
        for key in ("clip", "scene"):
            assert torch.equal(one[key], two[key]), (name, key)  # to the bit


# one step on a batch of 16, no dropout, no augmentation, no averaging: both launches see the same numbers, and
# a large first step makes any error show
ONE_STEP = dict(
    feature_cache=False,
    batch_size=16,
    batches_per_epoch=1,
    dropout=0.0,
    augment="none",
    ema_decay=0.0,
    warmup_steps=0,
    lr=1e-2,
)


def _last_checkpoints(cfg, tmp_path) -> dict:
    """Train `cfg` with the command line users run, in 1 and in 2 processes; each one's last checkpoint."""
    states = {}
    for processes in (1, 2):
        runs = tmp_path / f"runs{processes}"
        values = asdict(cfg) | {"runs_dir": str(runs), "cache_dir": str(runs / "cache")}
        settings = [arg for name, value in values.items() for arg in ("--set", f"{name}={value!r}")]
        _launch(["-m", "geoloc_lib.train", *settings], processes)
        states[processes] = torch.load(runs / f"run/checkpoints/phase{cfg.phase}/last.pt", weights_only=True)
    return states


def test_one_data_parallel_step_equals_the_single_process_step(tiny_config, tmp_path):
    # the CLIP tower trains (layer norm only: batch norm statistics would differ per process)
    cfg = tiny_config(freeze_clip=False, **ONE_STEP)
    states = _last_checkpoints(cfg, tmp_path)
    one, two = (states[p]["optimizer_state"]["state"] for p in (1, 2))
    assert len(one) == len(two) > 30  # heads and the CLIP tower
    # Adam's first moment after one step is 0.1 x the gradient: the gradient of the whole batch, averaged
    # over the processes, must equal the one a single process computes
    for index, moments in one.items():
        torch.testing.assert_close(two[index]["exp_avg"], moments["exp_avg"], atol=1e-7, rtol=1e-4)
        torch.testing.assert_close(two[index]["exp_avg_sq"], moments["exp_avg_sq"], atol=1e-10, rtol=1e-3)
    assert max(float(m["exp_avg"].abs().max()) for m in one.values()) > 1e-4  # real gradients
    # and the weights agree; Adam's first step is about lr x sign(gradient), so an element whose gradient
    # is near zero (below Adam's eps) may move by a fraction of lr on float noise alone
    clip_keys = [k for k in states[1]["model_state"] if k.startswith("encoders.clip.")]
    assert clip_keys
    for key, value in states[1]["model_state"].items():
        torch.testing.assert_close(states[2]["model_state"][key], value, atol=0.2 * cfg.lr, rtol=0)


def test_one_data_parallel_phase2_step_equals_the_single_process_step(tiny_config, tmp_path):
    """Phase 2 on the image path under torchrun: the CLIP tower's last block trains (layer norm, no batch norm)."""
    from geoloc_lib.train.loop import fit

    start = tiny_config(runs_dir=tmp_path / "start", dropout=0.0, ema_decay=0.0, batches_per_epoch=4)
    fit(start, progress=False)
    phase2 = dict(phase1_checkpoint=str(start.run_dir), unfreeze_clip_blocks=1, unfreeze_scene_stages=0)
    cfg = tiny_config(phase=2, lr_clip=1e-2, **phase2, **ONE_STEP)
    states = _last_checkpoints(cfg, tmp_path)
    one, two = (states[p]["optimizer_state"]["state"] for p in (1, 2))
    assert len(one) == len(two)
    for index, moments in one.items():
        torch.testing.assert_close(two[index]["exp_avg"], moments["exp_avg"], atol=1e-7, rtol=1e-4)
    trained = [k for k in states[1]["model_state"] if k.startswith("encoders.")]
    assert trained and all(
        k.startswith(
            (
                "encoders.clip.body.transformer.resblocks.1.",
                "encoders.clip.body.ln_post",
                "encoders.clip.body.proj",
            )
        )
        for k in trained
    )
    for key, value in states[1]["model_state"].items():
        torch.testing.assert_close(states[2]["model_state"][key], value, atol=0.2 * cfg.lr, rtol=0)
