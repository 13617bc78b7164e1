"""The server's page: a header that says what the run is, a place to drop or choose photos, and one answer card
per photo (`viz/answer_card.py`, drawn by the server, maps and all, so the page needs no internet). A refused
photo is listed with its reason. Every string from the run or a client is escaped in Python (the header, the
cards) or set as text in the browser (the refusals), never parsed as HTML."""

from __future__ import annotations

import html

from geoloc_lib.serve.asker import Limits

SCRIPT = """
const input = document.getElementById("photos"), zone = document.getElementById("drop");
const answers = document.getElementById("answers"), status = document.getElementById("status");
function say(text, kind) {
  const line = document.createElement("p");
  line.className = kind; line.textContent = text;
  answers.prepend(line);
}
async function ask(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("photos", file, file.name);
  status.textContent = "asking the model about " + files.length + " photo(s)...";
  let response, reply;
  try {
    response = await fetch("predict?cards=true", {method: "POST", body: form});
  } catch (err) {
    status.textContent = ""; say("the server did not answer: " + err, "geoloc-refused"); return;
  }
  status.textContent = "";
  if (!(response.headers.get("content-type") || "").includes("json")) {
    say("the server failed on these photos (HTTP " + response.status + "); its terminal says why", "geoloc-refused");
    return;
  }
  reply = await response.json();
  if (reply.error) { say(reply.error, "geoloc-refused"); return; }
  for (const photo of reply.photos.slice().reverse()) {
    if (photo.status === 200) answers.insertAdjacentHTML("afterbegin", photo.card);  // escaped by the server
    else say(photo.error, "geoloc-refused");
  }
}
input.addEventListener("change", () => { ask(Array.from(input.files)); input.value = ""; });
zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (e) => {
  e.preventDefault(); zone.classList.remove("over"); ask(Array.from(e.dataTransfer.files));
});
"""

STYLE = """
body { font: 14px sans-serif; margin: 16px 24px; color: #111; max-width: 1100px }
header { border-bottom: 1px solid #ccc; padding-bottom: 8px }
header h1 { font-size: 20px; margin: 0 0 4px }
.facts { color: #444 }
#drop { border: 2px dashed #999; border-radius: 8px; padding: 18px; margin: 12px 0; text-align: center }
#drop.over { border-color: #d7191c; background: #fff4f2 }
.geoloc-refused { color: #b00; font-weight: bold }
.geoloc-hypotheses td, .geoloc-hypotheses th { padding: 1px 6px; text-align: right }
"""


def _facts_lines(facts: dict) -> list[str]:
    data = facts["training_data"]
    lines = [
        f"encoder {facts['encoder']}; {facts['cells']} geocells; {facts['decoding']} decoding",
        f"trained on {data['train_photos'] if data['train_photos'] is not None else '?'} photos of {data['data_dir']}",
    ]
    calibration = facts["calibration"]
    lines.append(
        "credible radii calibrated at "
        + ", ".join(f"{round(100 * level)} %" for level in calibration["levels"])
        + f" on {calibration['photos']} validation photos"
        if calibration
        else "no credible radii (the run is not calibrated)"
    )
    test = facts["test"]
    if test is None:
        lines.append("no test evaluation yet (notebooks/04_error_maps writes one)")
    elif "error" in test:
        lines.append(f"test evaluation unreadable: {test['error']}")
    else:
        lines.append(
            f"{test['split']} split, {test['photos']} photos: median error {test.get('median_error_km')} km, "
            f"{test.get('acc_25km')} % within 25 km, {test.get('acc_200km')} % within 200 km, "
            f"province right {test.get('province_acc')} %"
        )
    return lines


def page_html(facts: dict, limits: Limits) -> str:
    facts_html = "<br>".join(html.escape(line) for line in _facts_lines(facts))
    name = html.escape(facts["run"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>geoloc-serve: {name}</title><style>{STYLE}</style></head>
<body>
<header><h1>Where was this photo taken? Run <span id="run">{name}</span></h1>
<div class="facts">{facts_html}</div></header>
<div id="drop">Drop photos here, or <label>choose them: <input type="file" id="photos" multiple
accept="image/*"></label><br><small>at most {limits.max_photos} photos at a time, {limits.max_upload_mb:g} MB
each; they are placed in Pakistan by this run's model and kept nowhere</small></div>
<div id="status"></div>
<div id="answers"></div>
<script>{SCRIPT}</script>
</body></html>"""
