"""geoloc-serve as its users reach it: the real server started from the command line on a free loopback port,
asked over HTTP, its page driven in headless Chromium."""

import hashlib
import io
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_TRAINING, chrome_driver
from PIL import Image

from geoloc_lib.inference.answers import readable_table
from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
MAX_PHOTOS, MAX_MB = 4, 1


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    """A server started as a user starts it, and the address its first line names."""
    server = subprocess.Popen(
        [sys.executable, "-m", "geoloc_lib.serve", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()  # printed once the run is loaded and the port is open
    if "http://" not in line:
        server.kill()
        raise AssertionError(f"no address from geoloc-serve: {line!r} {server.stderr.read()[-2000:]}")
    return server, line.split("http://")[1].split("/")[0]


def _stop(server: subprocess.Popen) -> tuple[str, str]:
    """(what it printed on stdout, on stderr) once stopped by Ctrl-C."""
    server.send_signal(signal.SIGINT)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "Traceback" not in err, err[-2000:]
    return out, err


def _files(root: Path) -> dict:
    """Every file under `root` with its size, time and content hash."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def served(tiny_data, tmp_path_factory):
    """(base URL, run folder, the run folder's files before serving) of a tiny trained run being served."""
    runs_dir = tmp_path_factory.mktemp("runs")
    common = {"data_dir": str(tiny_data), "runs_dir": str(runs_dir), "cache_dir": str(runs_dir / "cache")}
    fit(
        TrainConfig(**(common | TINY_TRAINING | {"run_name": "served", "phase0_checkpoint": ""})),
        progress=False,
    )
    run = runs_dir / "served"
    before = _files(run)
    server, address = _start(
        [str(run), "--port", "0", "--max-photos", str(MAX_PHOTOS), "--max-upload-mb", str(MAX_MB)]
    )
    yield f"http://{address}", run, before
    assert "geoloc-serve: stopped" in _stop(server)[0]


def _test_photos(tiny_data, n: int) -> list[Path]:
    return [tiny_data / name for name in pd.read_csv(tiny_data / "test.csv")["image"].iloc[:n]]


def _post(url: str, files: list[tuple[str, bytes]], **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("photos", (n, d)) for n, d in files], timeout=60, **kwargs)


def test_the_server_answers_what_the_predictor_answers(served, tiny_data):
    url, run, _ = served
    photos = _test_photos(tiny_data, 3)
    reply = _post(url, [(p.name, p.read_bytes()) for p in photos])
    assert reply.status_code == 200 and reply.json()["run"] == "served"
    answers = reply.json()["photos"]
    expected = readable_table(Predictor.from_run(run).predict([str(p) for p in photos]), top_k=5)
    assert [a["file"] for a in answers] == [p.name for p in photos]
    for answer, (_, row) in zip(answers, expected.iterrows(), strict=True):
        assert answer["status"] == 200 and answer["province"] == row["province"]
        assert answer["nearest_town"] == row["nearest_town"]
        for field in ("lat", "lon", "joint_lat", "mixture_lon", "radius_50_km", "radius_90_km", "confidence"):
            assert answer[field] == pytest.approx(row[field], abs=1e-4), field
        assert answer["out_of_domain"] == bool(row["out_of_domain"])
        assert [h["cell_id"] for h in answer["hypotheses"]] == [h["cell_id"] for h in row["hypotheses"]]
        assert [h["prob"] for h in answer["hypotheses"]] == pytest.approx(
            [h["prob"] for h in row["hypotheses"]], abs=1e-4
        )


def test_requests_that_wait_together_share_one_forward_pass():
    from geoloc_lib.serve.batcher import Batcher

    calls, release = [], threading.Event()

    def place(images, batch_size, cell_probs=False):
        calls.append((list(images), batch_size, cell_probs))
        if len(calls) == 1:
            release.wait(10)  # the first pass holds the model while the other requests arrive
        return pd.DataFrame({"image": images, "twice": [2 * i for i in images]})

    batcher, answers, threads = Batcher(place, batch_photos=5), {}, []
    for name, images in (("a", [1]), ("b", [2, 3]), ("c", [4]), ("d", [5, 6]), ("e", [7])):
        cards = name == "c"  # one request asks for the cell probabilities: its whole pass computes them
        threads.append(
            threading.Thread(
                target=lambda n=name, i=images, c=cards: answers.update({n: batcher.predict(i, c)})
            )
        )
        threads[-1].start()
        while not calls or (name != "a" and len(batcher._waiting) < len(threads) - 1):
            time.sleep(0.001)  # each request queued before the next arrives: a known order
    release.set()
    for thread in threads:
        thread.join(10)
    # a alone at once; then b, c and d together (5 photos); e would make 6, so it goes next, alone
    assert calls == [([1], 1, False), ([2, 3, 4, 5, 6], 5, True), ([7], 1, False)]
    for name, images in (("a", [1]), ("b", [2, 3]), ("c", [4]), ("d", [5, 6]), ("e", [7])):
        assert answers[name]["twice"].tolist() == [2 * i for i in images]  # each request gets its own rows
        assert answers[name].index.tolist() == list(range(len(images)))

    def broken(images, batch_size, cell_probs=False):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):  # a failed pass is every waiting request's error
        Batcher(broken).predict([1])


def test_concurrent_requests_each_get_their_own_photos_answers(served, tiny_data):
    url, run, _ = served
    photos = _test_photos(tiny_data, 8)
    with ThreadPoolExecutor(8) as pool:  # eight clients at once: their photos share forward passes
        replies = list(pool.map(lambda p: _post(url, [(p.name, p.read_bytes())]), photos))
    expected = readable_table(Predictor.from_run(run).predict([str(p) for p in photos]), top_k=5)
    for reply, photo, (_, row) in zip(replies, photos, expected.iterrows(), strict=True):
        answer = reply.json()["photos"][0]
        assert reply.status_code == 200 and answer["file"] == photo.name
        assert answer["lat"] == pytest.approx(row["lat"], abs=1e-3)
        assert answer["lon"] == pytest.approx(row["lon"], abs=1e-3)
        assert [h["cell_id"] for h in answer["hypotheses"]] == [h["cell_id"] for h in row["hypotheses"]]


def _jpeg(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 140, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A 12 KB PNG of 90 million pixels: past Pillow's decompression-bomb limit (89.5 million)."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 9_000)).save(buffer, "PNG")
    return buffer.getvalue()


def test_each_bad_photo_is_refused_with_its_reason_and_the_good_one_still_answered(served, tiny_data):
    url, _, _ = served
    good = _test_photos(tiny_data, 1)[0]
    too_big = np.random.default_rng(0).bytes(MAX_MB * 2**20 + 10)  # over --max-upload-mb, never decoded
    sent = [
        ("notes.txt", b"not a photo at all"),
        (good.name, good.read_bytes()),
        ("cut.jpg", _jpeg()[:300]),
        ("bomb.png", _bomb()),
    ]
    reply = _post(url, sent)
    answers = reply.json()["photos"]
    assert reply.status_code == 415  # the first refusal's status; every photo answered in the body
    assert [a["status"] for a in answers] == [415, 200, 422, 413]
    assert answers[1]["file"] == good.name and "lat" in answers[1]
    for answer, why in zip(answers, ("not an image", None, "truncated", "too many pixels"), strict=True):
        assert why is None or answer["error"].startswith(f"{answer['file']}: ") and why in answer["error"]
    reply = _post(url, [("big.jpg", too_big), (good.name, good.read_bytes())])
    assert reply.status_code == 413 and [a["status"] for a in reply.json()["photos"]] == [413, 200]
    assert "over the size limit of 1 MB" in reply.json()["photos"][0]["error"]
    # refused whole: too many photos, none, not a form, a body over every photo's limit together
    reply = _post(url, [(good.name, good.read_bytes())] * (MAX_PHOTOS + 1))
    assert reply.status_code == 413 and "too many photos" in reply.json()["error"]
    for reply in (httpx.post(f"{url}/predict"), httpx.post(f"{url}/predict", json={"photos": ["a.jpg"]})):
        assert reply.status_code == 400 and "no photos" in reply.json()["error"]
    huge = MAX_PHOTOS * MAX_MB * 2**20 + 2 * 2**20
    reply = _post(url, [("huge.jpg", b"\0" * huge)])
    assert reply.status_code == 413 and "the request is over" in reply.json()["error"]
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "run": "served"}  # still serving


def test_the_run_is_described_and_only_read(served, tiny_data):
    url, run, before = served
    facts = httpx.get(f"{url}/run").json()
    cells = pd.read_csv(tiny_data / "cell_metadata.csv")
    assert (facts["run"], facts["phase"], facts["cells"]) == ("served", 1, len(cells))
    assert facts["training_data"]["train_photos"] == len(pd.read_csv(tiny_data / "train.csv"))
    assert facts["calibration"]["levels"] == [0.5, 0.9] and facts["test"] is None  # no 04 evaluation yet
    photo = _test_photos(tiny_data, 1)[0]
    assert _post(url, [(photo.name, photo.read_bytes())], params={"cards": "true"}).status_code == 200
    assert _files(run) == before  # nothing written, touched or added in the run folder


def test_the_page_shows_a_dropped_photo_on_its_map_and_escapes_names(served, tiny_data, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = served
    hostile = tmp_path / "<img src=x onerror=alert(1)>.jpg"  # a name that is markup
    hostile.write_bytes(_test_photos(tiny_data, 1)[0].read_bytes())
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    driver = chrome_driver(tmp_path)
    try:
        driver.get(url)
        assert "served" in driver.find_element(By.ID, "run").text
        driver.find_element(By.ID, "photos").send_keys(f"{hostile}\n{text}")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".geoloc-card iframe"))
        card = driver.find_element(By.CSS_SELECTOR, ".geoloc-card")
        assert card.find_element(By.CSS_SELECTOR, ".geoloc-file").text == hostile.name  # shown as text
        assert not driver.find_elements(By.CSS_SELECTOR, "img[src='x']")
        refused = driver.find_element(By.CSS_SELECTOR, ".geoloc-refused").text
        assert refused.startswith("notes.txt: not an image")
        assert len(card.find_elements(By.CSS_SELECTOR, ".geoloc-hypotheses tr")) == 1 + 5
        driver.switch_to.frame(card.find_element(By.TAG_NAME, "iframe"))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "path.geoloc-prediction"))
        drawn = {
            name: len(driver.find_elements(By.CSS_SELECTOR, f"path.geoloc-{name}"))
            for name in ("prediction", "radius-50", "radius-90", "hypothesis")
        }
        assert drawn == {"prediction": 1, "radius-50": 1, "radius-90": 1, "hypothesis": 5}
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".leaflet-marker-icon")]
        assert any(t.startswith("#1 ") for t in labels)  # the best hypothesis named on the map
    finally:
        driver.quit()


def test_refusals_and_the_warning_beyond_loopback(served, tmp_path):
    url, run, _ = served
    taken = url.rsplit(":", 1)[1]
    for args, message in (
        ([str(tmp_path)], "is not a run folder"),
        ([str(run), "--port", taken], f"cannot listen on 127.0.0.1:{taken}"),
        ([str(run), "--max-upload-mb", "0"], "must be a number above 0"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "geoloc_lib.serve", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    server, address = _start([str(run), "--host", "0.0.0.0", "--port", "0"])
    try:
        assert httpx.get(f"http://127.0.0.1:{address.rsplit(':', 1)[1]}/health").status_code == 200
    finally:
        _, err = _stop(server)
    assert "warning: listening on 0.0.0.0, not this machine only" in err


def test_the_upload_widget_shows_the_pages_cards(served, tiny_data):
    import datetime

    from geoloc_lib.serve.asker import Asker
    from geoloc_lib.serve.notebook_panel import UploadPanel

    _, run, _ = served
    panel = UploadPanel(Asker.from_run(run))
    good = _test_photos(tiny_data, 1)[0]
    chosen = [(good.name, good.read_bytes()), ("notes.txt", b"not a photo")]
    when = datetime.datetime.now(datetime.timezone.utc)
    panel.upload.value = tuple(
        {"name": n, "type": "", "size": len(d), "content": memoryview(d), "last_modified": when}
        for n, d in chosen
    )  # as JupyterLab sets it when photos are chosen
    shown = panel.answers.value
    assert shown.count("class='geoloc-card'") == 1 and "<iframe class='geoloc-map'" in shown
    assert "notes.txt: not an image" in shown and shown.index("geoloc-card") < shown.index("notes.txt")


def test_the_conclusion_counts_places_radii_and_strangers():
    from geoloc_lib.serve.notebook_panel import answers_conclusion

    answers = [
        {"file": "a.jpg", "status": 200, "province": "Sindh", "radius_90_km": 10.0, "out_of_domain": False},
        {"file": "b.jpg", "status": 200, "province": "Punjab", "radius_90_km": 30.0, "out_of_domain": True},
        {"file": "c.jpg", "status": 200, "province": "Sindh", "radius_90_km": 90.0, "out_of_domain": False},
        {"file": "d.txt", "status": 415, "error": "d.txt: not an image"},
    ]
    assert answers_conclusion(answers).splitlines() == [
        "- 4 photos: 3 placed, 1 refused.",
        "- Refused: d.txt: not an image",
        "- Placed in Sindh (2), Punjab (1).",
        "- 90 % credible radius: median 30 km (for nine photos in ten the true place lies within it, as "
        "calibrated on this run's validation photos).",
        "- Out of domain, not to be trusted: b.jpg.",
    ]
    assert answers_conclusion([]).startswith("- No photos named")
