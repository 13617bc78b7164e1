"""Stage 6, train: from a run's settings to a finished run folder.

Owns building a run (`setup.build_training`), the epoch loop (`loop.fit`), the step and its steppers
(`step`), learning-rate schedules and weight averaging (`schedule`), starting, committing and resuming
(`run_state`), where Phase 1 starts (`phase0_start`) and Phase 2 starts (`fine_tune`), early
stopping (`early_stopping`), the epoch report (`epoch_report`), and the command line
(`__main__`: `python -m geoloc_lib.train`). May import every stage below it except `inference`, its sibling.
"""
