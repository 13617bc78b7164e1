"""Stage 1, geo: the geography of the problem.

Owns great-circle maths and Pakistan's bounding box (`sphere`), the seven provinces with their ids, aliases
and per-province constants (`provinces`), the geocell table as tensors (`cell_table.CellTable`) and the
geocell builder (`geocell_builder.build_geocells`), the area each cell stands for (`cell_regions`), the
province borders (`borders`) and the named places (`places`). May import `base` only.
"""
