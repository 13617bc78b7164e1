"""Stage 0, base: what every stage needs and that knows nothing of geolocation.

Owns atomic file writes and untrusted checkpoint reading (`atomic_files`), progress bars (`progress`), device
choice and autocast (`devices`), torchrun worlds (`distributed`), the exclusive folder lock (`folder_lock`),
the location of the bundled files (`resources`), the command lines' one-line refusals (`command_line`), the
check on every output file a user names (`output_files`), the files that mark a data or a run folder
(`folder_marks`) and reading a user's CSV (`user_tables`). Imports
nothing from the other stages.
"""
