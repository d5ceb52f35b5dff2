"""embedcache: extract chest X-ray foundation-model embeddings once, into one chunked store.

Importing this package is light: model libraries load when an encoder is built.
"""

__version__ = "0.1.0"
