"""A saved map page as a PNG for papers, rendered by headless Chromium with every network request refused
(the pages are offline: Leaflet is inlined and the base layer is the bundled borders)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from geoloc_lib.base.atomic_files import FileWriteError

RENDER_SECONDS = 8  # of virtual time for Leaflet to draw before the screenshot


def chromium_command(user_data_dir: str | Path) -> list[str] | None:
    """Headless Chromium with no network (every host name fails to resolve), or None where it is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return None
    return [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={user_data_dir}",
        f"--virtual-time-budget={RENDER_SECONDS * 1000}",
    ]


def save_png(html_path: str | Path, png_path: str | Path, width: int = 1400, height: int = 1000) -> Path:
    """Render a saved map page (maps.save_map) to `png_path`; a clear error when Chromium is missing."""
    html_path, png_path = Path(html_path).resolve(), Path(png_path)
    with tempfile.TemporaryDirectory() as profile:
        command = chromium_command(profile)
        if command is None:
            raise FileWriteError(
                f"{png_path}: no Chromium to render the map with; install it (Debian: apt-get install chromium) "
                f"or open {html_path} in a browser and save a screenshot"
            )
        partial = png_path.with_name(f".{png_path.name}.partial.png")
        shot = [
            *command,
            f"--window-size={width},{height}",
            f"--screenshot={partial.resolve()}",
            html_path.as_uri(),
        ]
        done = subprocess.run(shot, capture_output=True, text=True, timeout=180)
        if done.returncode != 0 or not partial.is_file():
            raise FileWriteError(
                f"{png_path}: Chromium could not render {html_path}: {done.stderr.strip()[-300:]}"
            )
    partial.replace(png_path)
    return png_path
