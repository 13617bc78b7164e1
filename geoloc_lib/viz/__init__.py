"""Stage 7, viz: what a person looks at.

Owns the offline folium maps (`maps`) and their still pictures (`static_maps`), the matplotlib figures
(`plots`), the worst-photo explorer (`explorer`), notebook helpers (`notebook`) and the export of executed
notebooks as offline pages (`notebook_export`). May import every stage below it.
"""
