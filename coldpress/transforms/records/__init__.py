"""Archive records: source bytes in, one archive row out; archive row in, pixels and image files out.

These are the functions every engine calls per input. A row is a plain dict whose keys are the
columns of the archive (``coldpress/transforms/schema.py``):

=================  =========================================================================
column             meaning
=================  =========================================================================
id                 stable record id: the normalized source key (``sources.record_id``)
source_uri         where the source was read from
source_bytes       size of the source file
source_sha256      sha256 (hex) of the source file's bytes
width, height      size of the coded image (after EXIF orientation)
mode               mode coded: L, LA, RGB or RGBA (see ``transforms/read.py`` for the policy); RASTER
                   for a geospatial raster (``transforms/raster/``)
source_format      Pillow's name of the source format (PNG, JPEG, TIFF, ...); GDAL's driver for rasters
source_mode        Pillow's mode of the source (P, I;16, CMYK, ...); "<bands>x<dtype>" for rasters
codec              codec name
model_id           model identity ("" for reference codecs)
weights_hash       first 8 bytes of the weights' sha256, hex ("" for reference codecs)
target_bpp         the bits per pixel asked for
achieved_bpp       8 * len(bitstream) / (width * height), container included (all bands of a raster)
bitstream          the coldpress container bytes (a raster package, CPRT, for rasters)
bitstream_sha256   sha256 (hex) of ``bitstream``, checked before every decode
recon_sha256       sha256 (hex) of the decoded pixels' bytes (C order) when the row was written
psnr               PSNR in dB of the decoded colour channels against the coded ones (alpha, stored
                   losslessly, is left out); 99.0 for an exact reconstruction
metadata           JSON text: EXIF, orientation, ICC profile, conversions, codec rate parameters; for
                   rasters "raster" (CRS, transform, nodata, bands, tags: ``raster.raster_metadata``)
                   and "quality" (RMSE and PSNR per band in the source's units)
coldpress_version  version of coldpress that wrote the row
codec_version      model id for learned codecs, else the codec's version or "pillow-<version>"
torch_version      installed torch version ("" if none)
device_class       where the codec computed ("cpu", "cuda")
created_at         UTC time the row was made (timezone-aware datetime)
=================  =========================================================================

Every row is verified on write: the bitstream is decoded right away and must give back an image
of the coded size and mode; ``recon_sha256`` lets a later restore check it decodes the same pixels.

The package, one job a module:

- ``encode``: source bytes in, one archive row out (``process_input``, ``encode_record``, rejected rows)
- ``decode``: archive row in, pixels out (``decode_record``, ``checked_bitstream``, ``pixels_sha256``, the
  decoder choice: ``decoder_fields``, ``decoder_provenance``)
- ``restore``: archive row in, file out (``restore_record``; regions of rasters: ``decode_region_record``,
  ``raster_file_bytes``)
- ``image_files``: restored image files of photos (``OUTPUT_FORMATS``, ``image_bytes``, ``write_image``, the
  provenance they record: ``restored_provenance``)
- ``names``: safe names of restored files (``restored_name``, ``restored_names``, ``with_extension``)
- ``atomic_write``: files written whole or not at all (``write_file_bytes``)
"""

from coldpress.metrics import psnr  # the rows' PSNR (``encode``): the benchmarks' one
from coldpress.transforms.records.atomic_write import write_file_bytes
from coldpress.transforms.records.decode import (
    checked_bitstream,
    decode_record,
    decoder_fields,
    decoder_provenance,
    is_raster_row,
    pixels_sha256,
    within_reference_decode,
)
from coldpress.transforms.records.encode import (
    PSNR_CAP,
    codec_version,
    encode_record,
    process_input,
    rejected_row,
    unreadable_row,
)
from coldpress.transforms.records.image_files import (
    OUTPUT_FORMATS,
    PROVENANCE_KEY,
    image_bytes,
    restored_provenance,
    to_pil,
    write_image,
)
from coldpress.transforms.records.names import restored_name, restored_names, with_extension
from coldpress.transforms.records.restore import decode_region_record, raster_file_bytes, restore_record

__all__ = [
    "OUTPUT_FORMATS", "PROVENANCE_KEY", "PSNR_CAP", "checked_bitstream", "codec_version", "decode_record",
    "decode_region_record", "decoder_fields", "decoder_provenance", "encode_record", "image_bytes", "is_raster_row",
    "pixels_sha256", "process_input", "psnr", "raster_file_bytes", "rejected_row", "restore_record",
    "restored_name", "restored_names", "restored_provenance", "to_pil", "unreadable_row", "with_extension",
    "within_reference_decode",
    "write_file_bytes", "write_image",
]
