"""Stage 6, inference: using a finished run (beside `train`, which it never imports).

Owns `predictor.Predictor` (a run's model and decoding, on photos) and `run_evaluation.evaluate_run` (the
report of a run on a labelled split, with the baseline ladder, written as an evaluation folder). The
predictor itself does not import the baselines. Also a prediction as people and programs read it (`answers`: the
rounding and fields `geoloc-predict` and `geoloc-serve` share) and the comparison of several runs
(`run_comparison`). May import every stage below it except `train`.
"""
