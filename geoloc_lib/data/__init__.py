"""Stage 2, data: from CSVs and photos to batches of encoder features.

Owns the data contract (`contract.load_dataset`, `DataContractError`), validation splits (`splits`), photo
decoding and torch datasets (`photos`), transforms (`transforms`), the province-balanced sampler
(`sampler`), the feature cache (`feature_cache`: `clean_features`, `augmented_features`; its settings in
`cache_spec.CacheSpec`), the
feature sources the training loop reads (`feature_sources`), the audit (`audit`), the synthetic demo data
(`demo_data`), and ingest: `dataset_builder`, with the listing of photos (`photo_listing`), their EXIF
(`photo_exif`) and the burst check (`bursts`). Takes the encoders it is handed; imports `base` and `geo` only.
"""
