"""The `bridge` sub-commands, one module per domain.

Each module exposes `register(sub, common)`, which adds its parsers to the
sub-parser set and sets `handler` on them: an async function
`handler(args, ctx) -> int` (an exit status). `cli.py` only wires these.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Context:
    """What every command gets: the loaded settings, where they came from, the environment."""

    settings: config.Settings
    config_path: Path | None
    env: dict[str, str]

    @property
    def store_password(self) -> str | None:
        secret = self.settings.store.password
        return secret.get_secret_value() if secret else None


Handler = Callable[[argparse.Namespace, Context], Coroutine[Any, Any, int]]
# `sub` is what ArgumentParser.add_subparsers() returns; `common` carries -c/--config.
Register = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", argparse.ArgumentParser], None
]
