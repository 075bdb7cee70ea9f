"""Keep third-party imports off the network: bitsandbytes' CPU backend asks the Hub for a kernel when imported.

`import peft` (and so TRL and our trainer) imports bitsandbytes when it is installed. On a CPU with AVX512-BF16, its
CPU backend then calls `kernels.get_kernel(...)`, which asks the Hub who publishes the kernel: a network call at
import time, which blocks for minutes where a proxy resolves but never answers, and prints warnings about
`trust_remote_code` on every run. cllmfs-trainer promises no network unless a hub id is given, so the import of
bitsandbytes runs with the Hub in offline mode and those two loggers quiet; bitsandbytes then uses its own CPU
kernels, as it does wherever `kernels` finds nothing. `CLLMFS_HUB_KERNELS=1` lets it ask the Hub as it would.

The hook is a `sys.meta_path` finder that acts on the import of `bitsandbytes` alone, so importing cllmfs-trainer
stays cheap (nothing is imported until something imports bitsandbytes).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Iterator
from types import ModuleType

GUARDED = "bitsandbytes"
OPT_IN_ENV = "CLLMFS_HUB_KERNELS"
QUIET_LOGGERS = ("bitsandbytes", "kernels")


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Put huggingface_hub in offline mode, and quiet bitsandbytes' and kernels' loggers, for the block."""
    import huggingface_hub.constants as hub_constants  # light: no torch; read at call time by every hub request

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    offline = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = offline
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _OfflineLoader(importlib.abc.Loader):
    """Runs the real loader of bitsandbytes inside `hub_offline()`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with hub_offline():
            self._loader.exec_module(module)


class _OfflineFinder(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes as the other finders do and wraps its loader; leaves every other import alone."""

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 - the MetaPathFinder signature
        if fullname != GUARDED or os.environ.get(OPT_IN_ENV) == "1":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _OfflineLoader(spec.loader)
                return spec
        return None


def disable_telemetry() -> None:
    """Turn off huggingface_hub's usage telemetry for this process (TRL's trainers send it when training starts).

    The command-line entry points call it: they reach the network only for a hub id the user gives. A user who sets
    `HF_HUB_DISABLE_TELEMETRY=0` keeps it on. Library use (`ContrastiveSFTTrainer` in a user's script) is left as the
    user set it up.
    """
    if os.environ.get("HF_HUB_DISABLE_TELEMETRY") == "0":
        return
    import huggingface_hub.constants as hub_constants  # read at call time by `send_telemetry`

    hub_constants.HF_HUB_DISABLE_TELEMETRY = True


def install() -> None:
    """Install the finder once (the package's `__init__` calls it)."""
    if not any(isinstance(finder, _OfflineFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OfflineFinder())
