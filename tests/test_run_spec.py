"""A run is one document: what describes a run, and runs made by earlier versions still read the same."""

from pathlib import Path

import numpy as np
import pandas as pd

V2_RUN = Path(__file__).parent / "fixtures" / "v2_run"


def test_a_run_made_before_checkpoint_version_3_predicts_what_it_predicted_then():
    from geoloc_lib.inference.predictor import Predictor

    expected = pd.read_csv(V2_RUN / "expected_predictions.csv")
    predictor = Predictor.from_run(V2_RUN / "run", data_dir=V2_RUN / "data", device="cpu")
    found = predictor.predict([str(V2_RUN / "data" / "photos" / name) for name in expected["photo"]])
    assert list(found["province"]) == list(expected["province"])
    numbers = [c for c in expected.columns if c not in ("photo", "province")]
    np.testing.assert_allclose(found[numbers].to_numpy(float), expected[numbers].to_numpy(float), atol=2e-5)


# the flat settings a stage owns: TrainConfig's name -> (the stage's settings class, its name there)
OWNED = {
    "proj_dim": ("HeadConfig", "proj_dim"),
    "geocell_hidden": ("HeadConfig", "geocell_hidden"),
    "small_geocell_hidden": ("HeadConfig", "small_geocell_hidden"),
    "dropout": ("HeadConfig", "dropout"),
    "temperature": ("HeadConfig", "temperature"),
    "decode_mode": ("DecodeConfig", "mode"),
    "top_provinces": ("DecodeConfig", "top_provinces"),
    "top_cells": ("DecodeConfig", "top_cells"),
    "prior_correction": ("DecodeConfig", "prior_correction"),
    "loss_province": ("LossWeights", "province"),
    "loss_geocell": ("LossWeights", "geocell"),
    "loss_offset": ("LossWeights", "offset"),
    "loss_aux": ("LossWeights", "aux"),
    "cache_dir": ("CacheSpec", "cache_dir"),
    "cache_dtype": ("CacheSpec", "dtype"),
    "cache_views": ("CacheSpec", "views"),
    "eval_batch_size": ("CacheSpec", "batch_size"),
    "num_workers": ("CacheSpec", "num_workers"),
    "seed": ("CacheSpec", "seed"),
}


def _sections() -> dict:
    from geoloc_lib.data.cache_spec import CacheSpec
    from geoloc_lib.model.decode_modes import DecodeConfig
    from geoloc_lib.model.head_config import HeadConfig
    from geoloc_lib.model.loss_weights import LossWeights

    return {c.__name__: c for c in (HeadConfig, DecodeConfig, LossWeights, CacheSpec)}


def test_every_default_a_stage_owns_is_written_once_in_that_stage():
    import ast
    import inspect

    from geoloc_lib.run import spec as config

    sections = _sections()
    flat = config.TrainConfig()
    for name, (section, field) in OWNED.items():
        assert getattr(flat, name) == getattr(sections[section](), field), name
    # and TrainConfig does not repeat the value: its default is the section's attribute, not a literal
    tree = ast.parse(inspect.getsource(config.TrainConfig))
    written = {
        node.target.id: ast.unparse(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and node.value is not None
    }
    for name, (section, field) in OWNED.items():
        assert written[name] == f"{section}.{field}", (name, written[name])


def test_notebook_02_decodes_the_way_a_trained_run_does():
    import json

    from geoloc_lib.model.decode_modes import DecodeConfig
    from geoloc_lib.run.spec import TrainConfig

    notebook = json.loads((Path(__file__).parents[1] / "notebooks" / "02_model_build.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    assert "DecodeConfig()" in code  # the notebook decodes with the defaults ...
    assert DecodeConfig() == TrainConfig().decoding  # ... which are a trained run's
    assert DecodeConfig().mode == "joint" and DecodeConfig().prior_correction == 1.0


PACKAGE = Path(__file__).parents[1] / "geoloc_lib"


def _compared_phases(tree) -> list[int]:
    """Lines that compare something named `phase` with a phase number (cfg.phase == 2, phase in (1, 2), ...):
    a rule about a phase written outside the phase table."""
    import ast

    def is_phase(node) -> bool:
        return (isinstance(node, ast.Name) and node.id == "phase") or (
            isinstance(node, ast.Attribute) and node.attr == "phase"
        )

    def is_number(node) -> bool:
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return all(is_number(e) for e in node.elts)
        return isinstance(node, ast.Constant) and isinstance(node.value, int)

    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(is_phase(n) for n in (node.left, *node.comparators))
        and any(is_number(n) for n in (node.left, *node.comparators))
    ]


def _literals(tree, values: set[str]) -> list[int]:
    import ast

    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in values]


def test_phase_rules_and_folder_names_live_in_one_place_each():
    import ast

    names = {"train.csv", "test.csv", "cell_metadata.csv", "config.json", "run_info.json"}
    phase_rules, spelled = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(PACKAGE).as_posix()
        if where != "run/phases.py":
            phase_rules += [f"{where}:{line}" for line in _compared_phases(tree)]
        if where != "base/folder_marks.py":
            spelled += [f"{where}:{line}" for line in _literals(tree, names)]
    assert phase_rules == [] and spelled == []


def test_the_one_place_test_finds_planted_rules():
    import ast

    planted = ast.parse(
        "if cfg.phase == 2:\n    pass\nfound = phase in (1, 2)\npath = root / 'train.csv'\nsame = saved == cfg.phase\n"
    )
    assert _compared_phases(planted) == [1, 3] and _literals(planted, {"train.csv"}) == [4]


def test_geoloc_predict_reads_the_runs_config_once(monkeypatch, capsys):
    from geoloc_lib.predict import main

    reads = []
    real = Path.read_text

    def counted(self, *args, **kwargs):
        if self.name == "config.json":
            reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    photos = sorted(str(p) for p in (V2_RUN / "data" / "photos").glob("*.jpg"))
    try:  # exit status 1: a photo flagged or skipped, which is not what this test is about
        main([str(V2_RUN / "run"), *photos, "--data-dir", str(V2_RUN / "data"), "--device", "cpu"])
    except SystemExit as stop:
        assert stop.code == 1
    assert "pk000000.jpg" in capsys.readouterr().out
    assert len(reads) == 1, reads


# who may load a file with torch: the safe loader itself, the feature cache's shards, encoder weights files, and
# the out-of-domain index (its own file, through the safe loader); checkpoints only through run/checkpoint.py
TORCH_LOADERS = {
    "base/atomic_files.py",
    "data/feature_cache.py",
    "model/encoders.py",
    "model/efficientnet_lite.py",
}
SAFE_LOADERS = {"base/atomic_files.py", "run/checkpoint.py", "evaluate/novelty.py"}
CHECKPOINT_KEYS = {"model_state", "optimizer_state", "ema_state", "train_state"}


def checkpoint_readers(root: Path) -> list[str]:
    import ast

    found = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if (name == "torch.load" and where not in TORCH_LOADERS) or (
                    name.endswith("load_checkpoint") and "." not in name and where not in SAFE_LOADERS
                ):
                    found.append(f"{where}:{node.lineno} {name}")
            elif (
                isinstance(node, ast.Constant)
                and node.value in CHECKPOINT_KEYS
                and where != "run/checkpoint.py"
            ):
                found.append(f"{where}:{node.lineno} {node.value!r}")
    return found


def test_one_module_reads_checkpoint_files(tmp_path):
    assert checkpoint_readers(PACKAGE) == []
    planted = tmp_path / "inference"
    planted.mkdir()
    (planted / "predictor.py").write_text("import torch\nstate = torch.load('x.pt')['model_state']\n")
    assert checkpoint_readers(tmp_path) == [
        "inference/predictor.py:2 torch.load",
        "inference/predictor.py:2 'model_state'",
    ]
