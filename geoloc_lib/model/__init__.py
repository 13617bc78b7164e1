"""Stage 3, model: the network and what it is trained and decoded with.

Owns the frozen encoders and their presets (`encoders`), the heads (`heads.GeoHeads`, `GeolocModel`), the one
model factory and Phase 0 loading (`factory`), the losses (`losses.GeolocLoss`), label-free decoding
(`decoding`, `decode_modes`) and retrieval refinement (`retrieval`). May import `base`, `geo` and `data`.
"""
