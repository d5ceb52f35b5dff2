"""One-pass extraction: manifest -> encoder -> store (``embedcache extract``)."""

from embedcache.extract.runner import ExtractResult, extract

__all__ = ["ExtractResult", "extract"]
