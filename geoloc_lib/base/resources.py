"""Where the files bundled with the package live (borders, towns, Leaflet, open_clip configs, page templates)."""

from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
