"""Failures to reach weights on the Hugging Face hub (or its local cache), as one actionable
error. Its own module so that the weight loaders of every family can raise it without importing
each other (no ``_weights`` <-> ``hf_loading`` cycle); ``huggingface_hub`` loads only when an
error is examined."""

from __future__ import annotations

__all__ = ["WeightsUnavailableError", "hub_errors", "hub_help"]


class WeightsUnavailableError(OSError):
    """Weights (or their config) could not be found: offline, gated, or no such repository."""


def hub_help(hub_id: str, what: str, exc: BaseException) -> WeightsUnavailableError:
    """Turn a hub failure into one actionable error (chained to the original)."""
    reason = "it is gated" if _is_gated(exc) else f"{type(exc).__name__}: {exc}".strip()
    return WeightsUnavailableError(
        f"could not load the {what} of {hub_id!r} from the Hugging Face hub or its local cache "
        f"({reason.splitlines()[0]}).\n"
        "  - offline or not cached: download it on a connected machine and pass the folder with "
        "--weights DIR (or the spec hf:DIR);\n"
        f"  - gated model: accept its licence on its page, https://huggingface.co/{hub_id}, then run "
        "`hf auth login` (or set HF_TOKEN) on this machine;\n"
        "  - to test the pipeline only: --weights none (random weights; the numbers mean nothing)."
    )


def _is_gated(exc: BaseException | None) -> bool:
    from huggingface_hub.errors import GatedRepoError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, GatedRepoError) or "gated" in str(exc).lower():
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    return (GatedRepoError, RepositoryNotFoundError, LocalEntryNotFoundError, OSError)
