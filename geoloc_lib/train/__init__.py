"""Stage 5, train: from a config to a finished run folder.

Owns `TrainConfig` and the phases (`config`, `phases`), building a run (`setup.build_training`), the epoch
loop (`loop.fit`), the step and its steppers (`step`), learning-rate schedules (`schedule`), the run folder's
files (`run_folder.RunFolder`), starting, committing and resuming (`run_state`), the checkpoint schema
(`checkpoint.Checkpoint`), where Phase 1 starts (`phase0_start`) and Phase 2 starts (`fine_tune`), early
stopping (`early_stopping`), the epoch report (`epoch_report`), and the command line (`python -m
geoloc_lib.train`, `__main__`). May import every stage below it.
"""
