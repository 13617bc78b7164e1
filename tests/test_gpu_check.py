"""`make gpu-check` runs unchanged on a lent GPU machine only if the script works; its smoke mode checks
every part of it on whatever device there is (here the CPU), with tiny sizes."""

import json

from tools.gpu_check import main


def test_every_part_of_the_gpu_check_runs_and_is_recorded(tmp_path, capsys):
    main(["--smoke", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    for part in ("gpu_tests", "step_bench", "extraction", "full_phase1"):
        assert "error" not in results[part], results[part]
        assert results[f"{part}_wall_s"] > 0
    assert results["gpu_tests"]["returncode"] == 0
    bench = results["step_bench"][0]
    assert bench["literal_s"] > 0 and bench["cached_s"] > 0  # both paths were timed in the same run
    assert results["extraction"]["photos"] > 0 and results["extraction"]["clean_photos_per_s"] > 0
    phase1 = results["full_phase1"]
    assert phase1["photos"] == 1500 and phase1["cells"] > 7 and len(phase1["epoch_s"]) == 1
    assert results["device"].endswith("(no GPU)") or phase1["stepper"] == "GraphStepper"
