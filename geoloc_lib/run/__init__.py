"""Stage 5, run: what describes a run, read and written in one place, for training and for using it alike.

Owns a run's settings (`spec.TrainConfig`, the flat view of every setting, whose stage-owned defaults come from
each stage's torch-free settings class, and `check_options`), the phases and their rules (`phases`), the run
folder and the data folder it reads (`folder.RunFolder`, `folder.load_run_data`), the checkpoint schema
(`checkpoint.Checkpoint`) and the model of a run, built to train or rebuilt from a checkpoint (`model`). Both
`train` and `inference` build on it, and neither imports the other. May import `base`, `geo`, `data`, `model`
and `evaluate`.
"""
