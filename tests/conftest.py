import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("GEOLOC_TEXT_PROGRESS", "1")  # notebooks run by papermill save readable progress

import shutil  # noqa: E402
import subprocess  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from geoloc_lib.data.demo_data import TINY_DEMO, generate_demo_dataset  # noqa: E402
from geoloc_lib.run.spec import TrainConfig  # noqa: E402
from geoloc_lib.viz.map_export import chromium_command  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny demo dataset, generated once per session (never modify it; copy it first)."""
    return generate_demo_dataset(tmp_path_factory.mktemp("data") / "tiny", replace(TINY_DEMO, workers=1))


@pytest.fixture
def tiny_copy(tiny_data, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst


TINY_TRAINING = dict(
    run_name="run",
    epochs=1,
    batches_per_epoch=8,
    batch_size=32,
    cache_views=2,
    proj_dim=64,
    geocell_hidden=64,
    small_geocell_hidden=32,
    eval_batch_size=64,
    num_workers=0,
    device="cpu",
    cuda_graph=False,
)


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    """Factory of small, fast training configs on the tiny data: tiny_config(**overrides).

    Runs go to tmp_path/runs unless `runs_dir` is given; the feature cache sits in the runs folder.
    """

    def make(**overrides) -> TrainConfig:
        runs_dir = Path(overrides.pop("runs_dir", tmp_path / "runs"))
        values = {"data_dir": str(tiny_data), "runs_dir": str(runs_dir), "cache_dir": str(runs_dir / "cache")}
        return TrainConfig(**(values | TINY_TRAINING | overrides))

    return make


def chromium_flags(tmp_path) -> list[str]:
    """Headless Chromium with no network (the library's own command); skips the test without it."""
    command = chromium_command(tmp_path / "chrome")
    if command is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    return command


def chrome_driver(tmp_path, size=(1100, 900)):
    """Selenium driving Debian's headless Chromium through its own chromedriver (no download, no network);
    skips the test where either is missing (.ci/run installs both)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "no Chromium and chromedriver on this machine (.ci/run installs Debian's chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'selenium-profile'}")
    return webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)


def dump_dom(flags, html_path) -> str:
    """The page's DOM after its scripts ran."""
    return subprocess.run(
        [*flags, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=180
    ).stdout


def jupyterlab_dom(flags, notebook: Path, data_dir: Path) -> str:
    """The DOM of `notebook` opened in a JupyterLab served from its folder, as headless Chromium sees it after
    Lab rendered it. `data_dir` holds Jupyter's data for this test (its notebook signatures among them)."""
    import socket
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "JUPYTER_DATA_DIR": str(data_dir)}
    lab = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ip=127.0.0.1",
            "--ServerApp.token=geoloc",
            f"--ServerApp.root_dir={notebook.parent}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):  # the server answers within a minute
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token=geoloc", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/lab/workspaces/test/tree/{notebook.name}?token=geoloc&reset"
        flags = [f for f in flags if not f.startswith(("--virtual-time-budget", "--host-resolver-rules"))]
        return subprocess.run(
            [*flags, "--virtual-time-budget=30000", "--window-size=1400,1000", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=240,
        ).stdout
    finally:
        lab.terminate()
        lab.wait(timeout=30)
