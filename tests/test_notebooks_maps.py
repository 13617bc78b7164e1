import ast
import base64
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest
from conftest import chromium_flags, dump_dom, jupyterlab_dom
from papermill.translators import PythonTranslator
from PIL import Image

from geoloc_lib.inference.predictor import Predictor
from geoloc_lib.run.phases import PHASE2_FIELDS
from geoloc_lib.run.spec import TrainConfig
from geoloc_lib.train.loop import fit
from geoloc_lib.viz.map_export import chromium_command
from geoloc_lib.viz.notebook_export import export_html

ROOT = Path(__file__).resolve().parents[1]
# the workbook's numbered notebooks; not what a user's papermill runs leave beside them (the design card's
# out.ipynb, ignored by git)
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if re.match(r"\d\d[a-z]?_", p.name))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_thin_stripped_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and nb.cells[1] is params[0]
    for node in ast.parse(params[0].source).body:  # literals only, each with a type hint
        assert isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Constant)
    # papermill sees every parameter (it skips a line with a second "=", e.g. in its comment)
    inspected = PythonTranslator.inspect(params[0])
    assert [p.name for p in inspected] == [n.target.id for n in ast.parse(params[0].source).body]
    assert all(p.help for p in inspected)  # each has a comment, shown by papermill --help-notebook
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None
            tree = ast.parse(cell.source)
            assert not any(isinstance(n, ast.FunctionDef | ast.ClassDef | ast.Lambda) for n in ast.walk(tree))


def _parameters(name: str) -> dict:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {node.target.id: node.value.value for node in ast.parse(cell.source).body}


def test_phase1_notebook_parameters_mirror_the_train_config():
    # one literal per TrainConfig field but Phase 2's (the notebook fixes phase=1), with the dataclass
    # defaults; None is written "" because papermill literals have no None
    expected = {
        f.name: "" if f.default is None else f.default
        for f in fields(TrainConfig)
        if f.name not in ("phase", *PHASE2_FIELDS)
    }
    assert _parameters("03_train_phase1") == expected
    assert TrainConfig.from_parameters(_parameters("03_train_phase1"), phase=1) == TrainConfig()


def test_config_from_notebook_parameters():
    namespace = {
        "epochs": 3,
        "images_root": "",
        "clip_pretrained": "",
        "pd": object(),
        "phase0_checkpoint": "p.pt",
    }
    cfg = TrainConfig.from_parameters(namespace, phase=0)
    assert (cfg.epochs, cfg.phase, cfg.phase0_checkpoint) == (3, 0, "p.pt")
    assert cfg.images_root is None and cfg.clip_pretrained is None  # optional fields: "" means None
    assert TrainConfig.from_parameters({"run_name": ""}).run_name == ""  # a new dated run when it starts
    with pytest.raises(ValueError, match="name it with run_name"):  # resume needs to know which run
        TrainConfig.from_parameters({"run_name": "", "resume": True})
    with pytest.raises(ValueError, match="epochs must be at least 1.*dropout"):
        TrainConfig.from_parameters({"epochs": 0, "dropout": 1.5})
    for name in ("02b_train_phase0", "03b_train_phase2"):  # no parameter is silently ignored
        assert set(_parameters(name)) <= {f.name for f in fields(TrainConfig)}
    phase2 = _parameters("03b_train_phase2")  # the original's Phase 2 recipe
    assert (phase2["lr"], phase2["lr_clip"], phase2["lr_scene"]) == (5e-4, 1e-5, 5e-6)
    assert (phase2["unfreeze_clip_blocks"], phase2["unfreeze_scene_stages"]) == (4, 1)


def _run(name, out_dir, **parameters):
    out = out_dir / f"{name}.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        kernel_name="geoloc",
        cwd=str(ROOT),
        progress_bar=False,
    )
    return out


def test_all_notebooks_run_under_papermill(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    common = dict(batch_size=32, proj_dim=64, cache_views=1, epochs=1, batches_per_epoch=4)
    _run(
        "00_data_audit",
        tmp_path,
        data_dir=str(tiny_data),
        output_dir=str(tmp_path / "audit"),
        generate_demo="",
    )
    assert (tmp_path / "audit" / "samples_map.html").is_file()
    _run("01_sampler_check", tmp_path, data_dir=str(tiny_data), batches_per_epoch=50)
    phase0 = runs / "p0"
    common["cache_dir"] = str(tmp_path / "feature_cache")
    _run("02b_train_phase0", tmp_path, data_dir=str(tiny_data), runs_dir=str(runs), run_name="p0", **common)
    p0 = phase0 / "checkpoints" / "phase0" / "phase0_best.pt"
    assert p0.is_file()
    _run(
        "02_model_build", tmp_path, data_dir=str(tiny_data)
    )  # full-width heads: the tiny Phase 0 (proj 64) does not fit
    run = runs / "p1"
    _run(
        "03_train_phase1",
        tmp_path,
        data_dir=str(tiny_data),
        runs_dir=str(runs),
        run_name="p1",
        phase0_checkpoint=str(p0),
        num_workers=0,
        **common,
    )
    trained = nbformat.read(tmp_path / "03_train_phase1.ipynb", as_version=4)
    live = next(c for c in trained.cells if "LiveCurves" in c.source)
    drawings = [o for o in live.outputs if "image/png" in o.get("data", {})]
    assert len(drawings) == 1  # redrawn in place after each epoch: one figure, not one per epoch
    log = (run / "log.txt").read_text()
    assert "Phase 0 weights from" in log and "new best" in log
    assert str(run.resolve()) not in log and str(run) not in log  # paths read relative to the run folder
    # Phase 2 continues the Phase 1 run: its data, split and heads come from p1's config
    _run(
        "03b_train_phase2",
        tmp_path,
        phase1_checkpoint=str(run),
        runs_dir=str(runs),
        run_name="p2",
        unfreeze_clip_blocks=1,
        epochs=1,
        batches_per_epoch=4,
        cache_dir=common["cache_dir"],
        num_workers=0,
    )
    tuned = nbformat.read(tmp_path / "03b_train_phase2.ipynb", as_version=4)
    table = next(c for c in tuned.cells if "best_validation" in c.source).outputs[0]["data"]["text/plain"]
    assert "p1 " in table and "p2 " in table  # Phase 2 beside the run it started from
    assert "trained: the last 1 CLIP block(s) and 1 scene stage(s)" in (runs / "p2" / "log.txt").read_text()
    browser = chromium_command(tmp_path / "chrome") is not None
    _run("04_error_maps", tmp_path, run_dir=str(run), worst_n=5, png_maps=browser)
    if browser:  # a picture of the map, not a blank page: the borders and dots give it many colours
        with Image.open(run / "maps" / "error_map.png") as png:
            assert png.size == (1400, 1000) and len(png.convert("RGB").getcolors(1 << 20)) > 50
    # a second recipe beside the first, compared in 05
    other = dict(
        common, data_dir=str(tiny_data), runs_dir=str(runs), run_name="p1_mixture", decode_mode="mixture"
    )
    fit(TrainConfig.from_parameters(other | {"num_workers": 0, "device": "cpu"}, phase=1), progress=False)
    _run("05_compare_runs", tmp_path, run_dirs=f"{run},{runs / 'p1_mixture'}")
    compared = nbformat.read(tmp_path / "05_compare_runs.ipynb", as_version=4)
    cell = next(c for c in compared.cells if c.source == "run_comparison.differing_settings(folders)")
    settings = cell.outputs[0]["data"]["text/plain"]
    assert "decode_mode" in settings and "mixture" in settings and "seed" not in settings  # only what differs
    medians = next(c for c in compared.cells if "province_medians" in c.source).outputs[0]["data"][
        "text/plain"
    ]
    assert "p1 " in medians and "p1_mixture" in medians and "Sindh" in medians  # both runs, per province
    # 06 answers a test photo with the card the server's page shows, its map a still picture in the notebook
    photo = tiny_data / pd.read_csv(tiny_data / "test.csv")["image"].iloc[0]
    _run("06_ask_the_model", tmp_path, run_dir=str(run), photos=str(photo))
    asked = nbformat.read(tmp_path / "06_ask_the_model.ipynb", as_version=4)
    cell = next(c for c in asked.cells if "answer_files" in c.source)
    shown = "".join(str(o.get("data", {}).get("text/html", "")) for o in cell.outputs)
    expected = Predictor.from_run(run).predict([str(photo)]).iloc[0]
    assert shown.count("class='geoloc-card'") == 1 and "geoloc-still-map" in shown and photo.name in shown
    assert f"<b class='geoloc-province'>{expected['province']}</b>" in shown
    assert f"({expected['lat']:.4f}, {expected['lon']:.4f})" in shown
    for name in (
        "maps/error_map.html",
        "maps/geocell_error_map.html",
        "figures/error_cdf.png",
        "figures/confusion.png",
        "evaluation/predictions.csv",
        "evaluation/summary.csv",
    ):
        assert (run / name).is_file(), name
    html = (run / "maps" / "error_map.html").read_text()
    assert "cdn.jsdelivr" not in html and "L.map(" in html  # Leaflet inlined, no CDN
    executed = {name: tmp_path / f"{name}.ipynb" for name in NOTEBOOK_NAMES}
    _check_saved_outputs(executed)
    _check_offline_rendering(
        executed, [*(tmp_path / "audit").glob("*.html"), *(run / "maps").glob("*.html")], tmp_path
    )
    _check_maps_in_jupyterlab(executed["04_error_maps"], tmp_path)
    _check_answers_in_jupyterlab(executed["06_ask_the_model"], tmp_path, expected["province"])


NOTEBOOK_NAMES = [path.stem for path in NOTEBOOKS]
HARMLESS_NOISE = ("No pretrained weights loaded", "not writable")  # warnings silenced at their source


def _check_saved_outputs(executed):
    """No silenced warning leaks into a saved notebook, every progress bar ends on its final state, and
    every notebook ends with its conclusion."""
    for name, path in executed.items():
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            for stream in ("stdout", "stderr"):  # a stream may be saved in several pieces: join them
                text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == stream)
                assert not any(noise in text for noise in HARMLESS_NOISE), (name, text[:200])
                assert stream == "stdout" or "%|" not in text, (name, "a progress bar saved as a warning box")
                for line in text.split("\n"):
                    final = line.split("\r")[-1]  # what a notebook viewer shows of this line
                    assert "%|" not in final or "100%" in final, (name, final)
        last = nb.cells[-1]
        assert nb.cells[-2].source == "## Conclusion" and last.outputs[0]["data"]["text/markdown"].startswith(
            "- "
        )


def _check_offline_rendering(executed, saved_maps, tmp_path):
    """Every saved map and every executed notebook (exported to HTML) renders in Chromium without network."""
    flags = chromium_flags(tmp_path)
    assert len(saved_maps) == 4
    for path in saved_maps:
        dom = dump_dom(flags, path)
        assert "leaflet-map-pane" in dom, path  # Leaflet ran from the inlined copy
        assert dom.count('class="leaflet-interactive"') >= 7, path  # at least the seven province borders
        assert "geoloc-legend" in dom and "leaflet-control-layers" in dom, path
        assert 'class="geoloc-title"' in dom, path  # every map has a title
        if path.name == "error_map.html":  # each province's median written on it, and two legends
            assert dom.count(" km</div>") >= 5 and "province fill: median error" in dom, path
            assert "photo dots: that photo" in dom, path
    for name, path in executed.items():
        page = export_html(path, tmp_path / f"{name}.html")
        text = page.read_text(encoding="utf-8")
        assert not re.search(r'<script[^>]*src="https?:', text), name  # nothing from a CDN
        assert not re.search(r"(?<![0-9])0%\|", text), name  # progress bars saved in their final state only
        dom = dump_dom(flags, page)
        assert "Conclusion" in dom, name
        warnings = re.findall(r'data-mime-type="application/vnd.jupyter.stderr".*?</div>', dom, re.S)
        assert not any("%|" in box for box in warnings), name  # no progress bar drawn as a warning box
        if name in ("00_data_audit", "04_error_maps"):  # the notebooks that show maps inline
            assert dom.count("leaflet-map-pane") >= 2 and dom.count('class="leaflet-interactive"') >= 14, name
            assert "geoloc-legend" in dom, name
    dom = dump_dom(flags, tmp_path / "04_error_maps.html")
    assert (
        'class="geoloc-explorer"' not in dom and "<iframe" in dom
    )  # one view: the widget, from its saved state
    # the explorer's saved widgets, drawn offline by the inlined ipywidgets renderer
    drawn = re.findall(r'class="lm-Widget[^"]*jupyter-widgets[^"]*"', dom)
    for kind in ("widget-dropdown", "widget-text", "widget-image", "widget-html", "widget-vbox"):
        assert any(kind in classes for classes in drawn), kind
    dropdown = re.search(r'class="lm-Widget[^"]*widget-dropdown".*?</select>', dom, re.S)
    assert dropdown and "Sindh" in dropdown.group(0)  # its saved choices


def _check_maps_in_jupyterlab(notebook, tmp_path):
    """04 as papermill wrote it, opened in JupyterLab: untrusted, its maps are still pictures (Lab runs none of
    their scripts); once `jupyter trust` signed it, the live Leaflet maps with the province polygons."""
    flags = chromium_flags(tmp_path)
    lab = tmp_path / "lab"
    lab.mkdir()
    opened = lab / notebook.name
    shutil.copyfile(notebook, opened)
    dom = jupyterlab_dom(flags, opened, tmp_path / "jupyter_data")
    pictures = re.findall(r'<img[^>]*class="geoloc-still-map"[^>]*src="data:image/png;base64,([^"]+)"', dom)
    assert len(pictures) == 2 and "leaflet-map-pane" not in dom  # the error map and the geocell map
    with Image.open(io.BytesIO(base64.b64decode(pictures[0]))) as png:
        colours = {c for _, c in png.convert("RGB").getcolors(1 << 20)}
    assert len(colours) > 50  # borders, fills, dots and labels; not an empty frame
    # the explorer without its kernel: its first view once, as plain HTML; no widget repr, no broken widget
    assert dom.count('class="geoloc-explorer"') == 1 and "VBox(children=" not in dom
    assert "Error displaying widget" not in dom and "data:image/jpeg;base64" in dom
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "jupyter_data")}
    subprocess.run(
        [sys.executable, "-m", "jupyter", "trust", str(opened)], check=True, env=env, capture_output=True
    )
    dom = jupyterlab_dom(flags, opened, tmp_path / "jupyter_data")
    assert "geoloc-still-map" not in dom and dom.count("leaflet-map-pane") >= 2
    assert dom.count('class="leaflet-interactive"') >= 14  # the seven province polygons on each map


def _check_answers_in_jupyterlab(notebook, tmp_path, province):
    """06 as papermill wrote it, opened in JupyterLab with no kernel: the answer's card (the photo, its province,
    its map as a still picture) and, for the upload widget, the note that it needs a running kernel, not a
    broken widget."""
    lab = tmp_path / "lab06"
    lab.mkdir()
    opened = lab / notebook.name
    shutil.copyfile(notebook, opened)
    dom = jupyterlab_dom(chromium_flags(tmp_path), opened, tmp_path / "jupyter_data")
    card = re.search(r'class="geoloc-card".*?class="geoloc-still-map"', dom, re.S)
    assert card and f'class="geoloc-province">{province}</b>' in card.group(0)
    assert 'src="data:image/jpeg;base64,' in card.group(0)  # the photo itself
    assert "The upload widget needs a running kernel" in dom and "Error displaying widget" not in dom
    assert "FileUpload(" not in dom  # no widget repr


def test_cell_regions_give_each_place_the_cell_assign_cells_gives_it(tiny_data):
    from shapely import Point

    from geoloc_lib.geo.borders import province_at
    from geoloc_lib.geo.cell_regions import cell_regions
    from geoloc_lib.geo.geocell_builder import assign_cells

    cells = pd.read_csv(tiny_data / "cell_metadata.csv")  # 13 cells in Sindh, 2 in Punjab, 1 elsewhere
    regions = cell_regions(cells)
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(24, 37, 4000), rng.uniform(61, 77.5, 4000)
    province = province_at(lat, lon)
    inside = province >= 0
    places = pd.DataFrame(
        {"latitude": lat[inside], "longitude": lon[inside], "province_id": province[inside]}
    )
    # the cell whose region holds each place, against the haversine nearest centre of its province
    held = [
        next((c for c, r in regions.items() if r.covers(Point(x, y))), -1)
        for x, y in zip(places["longitude"], places["latitude"], strict=True)
    ]
    nearest = assign_cells(places, cells)
    assert len(places) > 1000 and (np.array(held) == nearest).mean() > 0.97  # the projection is ~2 % off
    # the regions tile each province: their areas add up to it
    for pid, group in cells.groupby("province_id"):
        total = sum(regions[c].area for c in group["cell_id"])
        assert total == pytest.approx(_province_area(pid), rel=1e-6)


def _province_area(province_id: int) -> float:
    import shapely

    from geoloc_lib.geo import provinces as prov
    from geoloc_lib.geo.borders import province_borders

    return sum(
        shapely.geometry.shape(f["geometry"]).area
        for f in province_borders()["features"]
        if prov.lookup(f["properties"]["province"]).id == province_id
    )


def test_town_labels_never_collide_and_name_each_province():
    from geoloc_lib.geo.places import map_labels
    from geoloc_lib.geo.sphere import haversine_km

    labels = map_labels(25, 60)
    assert labels["name"].is_unique and len(labels) == 25
    assert {"Islamabad", "Karachi", "Lahore", "Peshawar", "Quetta"} <= set(labels["name"])
    lat, lon = labels["latitude"].to_numpy(), labels["longitude"].to_numpy()
    for i in range(len(labels)):
        others = np.delete(np.arange(len(labels)), i)
        assert np.min(haversine_km(lat[i], lon[i], lat[others], lon[others])) >= 60


def test_the_nearest_town_agrees_with_a_haversine_ball_tree():
    from sklearn.neighbors import BallTree

    from geoloc_lib.geo.places import NEAREST_CHUNK, load_places, nearest_places
    from geoloc_lib.geo.sphere import EARTH_RADIUS_KM

    rng = np.random.default_rng(0)
    n = NEAREST_CHUNK + 100  # more than one block of the distance table
    lat, lon = rng.uniform(24, 37, n), rng.uniform(61, 77, n)
    places = load_places()
    tree = BallTree(np.deg2rad(places[["latitude", "longitude"]].to_numpy()), metric="haversine")
    distance, index = tree.query(np.deg2rad(np.column_stack([lat, lon])), k=1)
    found = nearest_places(lat, lon)
    assert (found["nearest_town"].to_numpy() == places["name"].to_numpy()[index[:, 0]]).mean() > 0.999  # ties
    np.testing.assert_allclose(found["town_km"], distance[:, 0] * EARTH_RADIUS_KM, rtol=1e-6, atol=1e-6)
    assert nearest_places([31.5204], [74.3587])["nearest_town"].iloc[0] == "Lahore"


# every label's text and every control, as the browser lays them out in a map box of the design size
PROBE = """<style>.folium-map{width:%dpx !important;height:%dpx !important;position:absolute !important;
top:0;left:0}</style><script>
// a zoom animation as the map opens would leave the labels pulled to the centre for its 250 ms
L.Map.addInitHook(function () { this.on("zoomanim", function () { window.geolocZoomAnimated = true; }); });
function geolocBoxes() {
  var out = [];
  document.querySelectorAll(".leaflet-marker-icon").forEach(function (icon) {
    var walk = document.createTreeWalker(icon, NodeFilter.SHOW_TEXT), node, box = null;
    while ((node = walk.nextNode())) {
      if (!node.textContent.trim()) continue;
      var range = document.createRange(); range.selectNodeContents(node);
      var r = range.getBoundingClientRect();
      box = box ? [Math.min(box[0], r.left), Math.min(box[1], r.top), Math.max(box[2], r.right),
                   Math.max(box[3], r.bottom)] : [r.left, r.top, r.right, r.bottom];
    }
    if (box) out.push(["label: " + icon.textContent.trim()].concat(box));
  });
  [".geoloc-title", ".geoloc-legend", ".leaflet-control-zoom", ".leaflet-control-layers",
   ".leaflet-control-scale"].forEach(function (selector) {
    document.querySelectorAll(selector).forEach(function (e) {
      var r = e.getBoundingClientRect(); out.push([selector, r.left, r.top, r.right, r.bottom]);
    });
  });
  // each Leaflet map's zoom and size: the labels were laid out in Python for one zoom at one size
  Object.keys(window).forEach(function (key) {
    var map = window[key];
    if (key.indexOf("map_") === 0 && window.L && map instanceof L.Map) {
      out.push(["map", map.getZoom(), map.getSize().x, map.getSize().y, !!window.geolocZoomAnimated]);
    }
  });
  return JSON.stringify(out);
}
// written once the layout holds still for three looks in a row (a busy machine may still be laying it out)
window.addEventListener("load", function () {
  var last = null, same = 0, looks = 0;
  var timer = setInterval(function () {
    var now = geolocBoxes();
    same = now === last ? same + 1 : 0; last = now; looks += 1;
    if (same >= 2 || looks >= 50) {
      clearInterval(timer);
      var pre = document.createElement("pre"); pre.id = "boxes"; pre.textContent = now;
      document.body.appendChild(pre);
    }
  }, 200);
});</script>"""


def _overlapping_boxes(flags, page: str, tmp_path, size) -> tuple[list, list, list]:
    """(every label and control box the browser drew, the pairs of them that overlap by more than a pixel, each
    Leaflet map's [zoom, width, height, whether it animated a zoom])."""
    import html as html_text
    import json
    import re

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</head>", PROBE % size + "</head>", 1), encoding="utf-8")
    dom = dump_dom([*flags, f"--window-size={size[0]},{size[1] + 200}"], probed)
    drawn = json.loads(html_text.unescape(re.search(r'<pre id="boxes">(.*?)</pre>', dom, re.S).group(1)))
    maps = [b[1:] for b in drawn if b[0] == "map"]
    boxes = [b for b in drawn if b[0] != "map"]
    labels = [b for b in boxes if b[0].startswith("label")]
    pairs = [
        (a, b)
        for i, a in enumerate(labels)
        for b in labels[i + 1 :] + [c for c in boxes if not c[0].startswith("label")]
        if min(a[3], b[3]) - max(a[1], b[1]) > 1 and min(a[4], b[4]) - max(a[2], b[2]) > 1
    ]
    return boxes, pairs, maps


def _predictions(tiny_data) -> pd.DataFrame:
    """The tiny test split, each photo predicted 0.2 degrees north of its place, errors from 1 to 900 km."""
    test = pd.read_csv(tiny_data / "test.csv")
    return test.assign(
        pred_lat=test["latitude"] + 0.2,
        pred_lon=test["longitude"],
        pred_province=test["province"],
        pred_province_id=test["province_id"],
        error_km=np.linspace(1, 900, len(test)),
    )


def test_no_label_prints_over_another_or_a_control_in_a_browser(tiny_data, tmp_path):
    """The error map, the geocell map and the explorer's probability map, opened in Chromium at the size they
    were laid out for: no label's text overlaps another's, the title, a legend or a control."""
    from geoloc_lib.viz.label_layout import DESIGN_VIEW_PX, View
    from geoloc_lib.viz.maps import error_map, geocell_map, offline_html
    from geoloc_lib.viz.photo_maps import MAP_PX, probability_map

    flags = chromium_flags(tmp_path)
    pred, cells = _predictions(tiny_data), pd.read_csv(tiny_data / "cell_metadata.csv")
    probable = cells.assign(prob=np.linspace(1, 2, len(cells)) / np.linspace(1, 2, len(cells)).sum())
    top = probable.nlargest(5, "prob")  # the hypotheses, as Predictor.predict gives them
    hypotheses = [
        {
            "province": r.province,
            "cell_id": r.cell_id,
            "prob": r.prob,
            "lat": r.center_lat,
            "lon": r.center_lon,
        }
        for r in top.itertuples()
    ]
    answer = probability_map(
        probable, (30.0, 70.0), {0.5: 60.0, 0.9: 150.0}, (31.0, 71.0), MAP_PX, hypotheses
    )
    maps = {
        "error map": (error_map(pred), DESIGN_VIEW_PX),  # every province's median is written
        "geocell map": (geocell_map(cells), DESIGN_VIEW_PX),
        "probability map": (answer, MAP_PX),
    }
    for name, (m, size) in maps.items():
        boxes, pairs, drawn = _overlapping_boxes(flags, offline_html(m), tmp_path, size)
        labels = [b[0] for b in boxes if b[0].startswith("label")]
        towns = [t for t in labels if "\u25cf" in t]
        assert len(labels) >= 8 and len(towns) >= 3, (name, labels)
        # Leaflet opened the map at once at the zoom and size the labels were laid out for
        bounds = next(c.bounds for c in m._children.values() if type(c).__name__ == "FitBounds")
        assert drawn == [[View(bounds, size).zoom, *size, False]], (name, drawn)
        assert not pairs, (name, len(pairs), pairs[:4], boxes)
        assert name != "error map" or sum(t.endswith(" km") for t in labels) == 7, labels


def test_the_error_map_rims_its_dots(tiny_data):
    import folium

    from geoloc_lib.viz.maps import error_map

    pred = _predictions(tiny_data)
    m = error_map(pred)
    groups = {c.layer_name: c for c in m._children.values() if isinstance(c, folium.FeatureGroup)}
    dots = [c for c in groups["photos by error"]._children.values()]
    assert all(
        d.options["color"] == "#333333" and d.options["weight"] > 0 for d in dots
    )  # a rim on every dot
