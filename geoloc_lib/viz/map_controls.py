"""Controls drawn on the maps: legends (bottom right, stacked) and a title (top centre)."""

from __future__ import annotations

import html

from branca.element import MacroElement, Template


class Legend(MacroElement):
    """A legend as a Leaflet control in the bottom-right corner (controls in one corner stack, never overlap)."""

    _template = Template(
        """{% macro script(this, kwargs) %}
        (function () {
            var legend = L.control({position: "bottomright"});
            legend.onAdd = function () {
                var div = L.DomUtil.create("div", "geoloc-legend");
                div.style.cssText = "background:white;padding:6px 8px;border:1px solid #999;font:12px sans-serif";
                div.innerHTML = {{ this.body|tojson }};
                return div;
            };
            legend.addTo({{ this._parent.get_name() }});
        })();
        {% endmacro %}"""
    )

    def __init__(self, title: str, entries: list[tuple[str, str]], shape: str = "square"):
        super().__init__()
        self.title, self.entries, self.shape = title, entries, shape  # for the still picture (static_maps.py)
        radius = "50%" if shape == "circle" else "0"
        rows = "".join(
            f'<div><span style="display:inline-block;width:11px;height:11px;background:{color};'
            f'border-radius:{radius};margin-right:6px"></span>{html.escape(label)}</div>'
            for label, color in entries
        )
        self.body = f"<b>{html.escape(title)}</b>{rows}"


class Title(MacroElement):
    """The map's title, centred at the top above the tiles (a legend or the layer list never covers it)."""

    _template = Template(
        """{% macro script(this, kwargs) %}
        (function () {
            var map = {{ this._parent.get_name() }};
            var div = L.DomUtil.create("div", "geoloc-title", map.getContainer());
            div.style.cssText = "position:absolute;top:8px;left:50%;transform:translateX(-50%);z-index:1000;" +
                "background:rgba(255,255,255,0.9);padding:4px 10px;border:1px solid #999;font:bold 14px sans-serif";
            div.innerHTML = {{ this.text|tojson }};
        })();
        {% endmacro %}"""
    )

    def __init__(self, text: str):
        super().__init__()
        self.text = html.escape(text)
