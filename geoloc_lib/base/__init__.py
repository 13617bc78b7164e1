"""Stage 0, base: what every stage needs and that knows nothing of geolocation.

Owns atomic file writes and untrusted checkpoint reading (`atomic_files`), progress bars (`progress`), device
choice and autocast (`devices`), torchrun worlds (`distributed`), the exclusive folder lock (`folder_lock`)
and the location of the bundled files (`resources`). Imports nothing from the other stages.
"""
