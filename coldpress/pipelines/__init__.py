"""Engines: run the transforms over many inputs. ``local`` runs in one process with no cluster."""

from coldpress.pipelines.local import encode_local, restore_local, verify_local

__all__ = ["encode_local", "restore_local", "verify_local"]
