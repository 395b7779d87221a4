"""Defaults shared by the CLI and the engines: change a default here and nowhere else."""

#: Codec used when ``--codec`` is not given.
DEFAULT_CODEC = "learned"

#: File format of restored images when ``--format`` is not given: "auto" is PNG for photos and a Cloud
#: Optimized GeoTIFF for georeferenced rasters.
DEFAULT_RESTORE_FORMAT = "auto"
