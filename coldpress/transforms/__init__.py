"""Engine-neutral transforms: source listing and reading, input decoding, archive records, restore.

Engines (local, Ray, Beam) call these functions; they call ``coldpress.codec``. Nothing here knows
which engine runs it.
"""
