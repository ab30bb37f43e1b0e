"""Artifact storage: the layout of stage outputs, runs and service state under one root (local or fsspec)."""

from storage.layout import SUCCESS_MARKER, StorageLayout

__all__ = ["SUCCESS_MARKER", "StorageLayout"]
