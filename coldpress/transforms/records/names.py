"""Names of restored files: safe relative paths made of record ids (``restored_name``, ``restored_names``
for a batch without collisions) and ``with_extension``."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from coldpress.transforms.records.image_files import _output_format

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
_UNSAFE_CHARS = re.compile(r'[<>:"|?*\\/]')
_MAX_COMPONENT_BYTES = 200


def _safe_component(part: str) -> str:
    part = unicodedata.normalize("NFC", part)
    chars = []
    for ch in part:
        category = unicodedata.category(ch)
        if category[0] in ("C", "Z") and ch != " ":  # control, format, surrogate, unassigned, separators
            chars.append("_")
        elif _UNSAFE_CHARS.match(ch):
            chars.append("_")
        else:
            chars.append(ch)
    safe = "".join(chars).strip(" .")  # Windows drops trailing dots and spaces; leading ones hide files
    if not safe:
        safe = "_"
    if safe.split(".")[0].upper() in _WINDOWS_RESERVED:
        safe = "_" + safe
    encoded = safe.encode("utf-8")
    if len(encoded) > _MAX_COMPONENT_BYTES:
        digest = hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = encoded[: _MAX_COMPONENT_BYTES - 9].decode("utf-8", "ignore") + "~" + digest
    return safe


def restored_name(record_id: str, fmt: str = "png") -> str:
    """A safe relative output path for a record: its id's folders and name, with ``fmt``'s extension.

    The result never escapes the destination it is joined to: it has no "..", "." or empty
    components, no leading "/", no drive letter or ":" at all, no backslash, NUL or control
    characters, and no Windows-reserved names. Characters that are unsafe in file names on common
    systems become "_". Different ids can give the same name (e.g. "a.jpg" and "a.png"); use
    :func:`restored_names` to name a batch without collisions.
    """
    _, ext, _ = _output_format(fmt)
    text = str(record_id).replace("\\", "/")
    parts = [p for p in text.split("/") if p.strip(" ") not in ("", ".", "..")]
    parts = [_safe_component(p) for p in parts] or ["_"]
    stem, dot, _suffix = parts[-1].rpartition(".")
    if not dot or not stem:
        stem = parts[-1]
    parts[-1] = f"{stem}.{ext}"
    return "/".join(parts)


def restored_names(record_ids: list[str], fmt: str = "png") -> dict[str, str]:
    """``restored_name`` of each id, with a short hash of the id added where two ids collide."""
    names = {rid: restored_name(rid, fmt) for rid in record_ids}
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name.lower()] = seen.get(name.lower(), 0) + 1
    out = {}
    for rid, name in names.items():
        if seen[name.lower()] > 1:
            stem, _, ext = name.rpartition(".")
            name = f"{stem}~{hashlib.sha256(str(rid).encode('utf-8', 'surrogatepass')).hexdigest()[:8]}.{ext}"
        out[rid] = name
    return out


def with_extension(target: str, ext: str) -> str:
    head, _, name = str(target).rpartition("/")
    stem, dot, _old = name.rpartition(".")
    name = f"{stem if dot and stem else name}.{ext}"
    return f"{head}/{name}" if head else name
