"""embedcache: extract chest X-ray foundation-model embeddings once, into one chunked store.

::

    import embedcache

    result = embedcache.extract("cohort/manifest.csv", "rad-dino", "cohort.zarr")
    with embedcache.open_store("cohort.zarr") as store:
        group = store.group(result.key)
        group.read_rows("grid16", [3, 17])        # (2, h, w, C)
    image = embedcache.read_image("film.dcm")    # (H, W) float32 in [0, 1], VOI + MONOCHROME1
    manifest = embedcache.load_manifest("cohort/manifest.csv")

Importing this package is light: each name loads on first use, and model libraries load when
an encoder is built, not before.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["extract", "load_manifest", "open_store", "read_image"]

_EXPORTS = {
    "extract": "embedcache.extract",
    "open_store": "embedcache.store",
    "read_image": "embedcache.intake.images",
    "load_manifest": "embedcache.intake.manifest",
}


def __getattr__(name: str) -> object:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'embedcache' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*_EXPORTS, "__version__"])
