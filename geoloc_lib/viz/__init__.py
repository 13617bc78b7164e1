"""Stage 7, viz: what a person looks at.

Owns the offline folium maps (`maps`, one photo's in `photo_maps`, their controls in `map_controls`), the text on
them laid out so that none overlaps (`map_labels`, the geometry in `label_layout`), their still pictures
(`static_maps`) and PNGs (`map_export`), the matplotlib figures
(`plots`), the worst-photo explorer (`explorer`), one photo's answer card (`answer_card`), notebook helpers (`notebook`) and the export of executed
notebooks as offline pages (`notebook_export`). May import every stage below it.
"""
