"""Command line for training, in one process or many (torchrun):

    python -m geoloc_lib.train --set run_name=try1 --set epochs=30
    torchrun --standalone --nproc_per_node=4 -m geoloc_lib.train --set feature_cache=False \\
        --set freeze_scene=False --set run_name=finetune

Every --set is a TrainConfig field (see geoloc_lib/run/spec.py); the notebooks 02b and 03 do the same through
their parameters. Several processes train the image path (trained encoders) under DistributedDataParallel.
"""

from __future__ import annotations

import sys

from geoloc_lib.base.command_line import CommandParser, run_command
from geoloc_lib.run.spec import config_from_command_line

PROG = "python -m geoloc_lib.train"


def main(argv=None) -> int:
    config = config_from_command_line(
        argv, CommandParser(prog=PROG, description=__doc__)
    )  # --help answers here, before torch is imported

    def body() -> None:
        from geoloc_lib.train.loop import fit

        result = fit(config)
        print(f"best epoch {result.best_epoch}: {result.best_metric:.2f} -> {result.run_dir}")

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
