"""Quiet internal loads: the ``Loading weights`` / ``Writing model shards`` bars of transformers
and huggingface_hub are noise when seed_hf loads a teacher or saves a checkpoint for the user.
They stay off unless asked for: ``SEED_HF_PROGRESS_BARS=1``, or transformers' verbosity set to
INFO/DEBUG (the scripts' ``--log_level info``/``debug``)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, TypeVar

__all__ = ["PROGRESS_ENV", "QuietHubMixin", "loading_progress_requested", "quiet_loading", "quietly"]

PROGRESS_ENV = "SEED_HF_PROGRESS_BARS"

F = TypeVar("F", bound=Callable[..., Any])


def loading_progress_requested() -> bool:
    """Whether the user asked for the load / save progress bars."""
    from transformers.utils import logging as hf_logging

    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value:
        return value in ("1", "true", "yes", "on")
    return hf_logging.get_verbosity() <= logging.INFO


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Turns transformers' (and with them huggingface_hub's) progress bars off for the block,
    unless [`loading_progress_requested`]; restores the previous state afterwards."""
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled() or loading_progress_requested():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def quietly(function: F) -> F:
    """Decorator form of [`quiet_loading`]."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with quiet_loading():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class QuietHubMixin:
    """``from_pretrained`` / ``save_pretrained`` of a seed_hf ``PreTrainedModel`` without the
    per-call progress bars (checkpoints are saved every ``save_steps``; evaluation and export load
    run folders): put it before ``PreTrainedModel`` in the bases."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        with quiet_loading():
            return super().from_pretrained(*args, **kwargs)  # type: ignore[misc]

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        with quiet_loading():
            return super().save_pretrained(*args, **kwargs)  # type: ignore[misc]
