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
