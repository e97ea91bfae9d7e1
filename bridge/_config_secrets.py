"""Where bridge's secrets come from: the config file, a file, the environment, systemd.

`resolve_secrets` takes the raw TOML tables and the environment, finds each
secret in its four possible sources, and returns new tables in which the
secret key holds a `SecretStr` (or is absent) and the `<key>_file` key is
gone, ready for `bridge.config`'s models.

This module never puts a secret's value into an exception, a log line or a
repr; a failure is a `SecretError` naming the key and, at most, a path. It
does not validate anything else in the config.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

REDACTED = "<secret>"


@dataclass(frozen=True)
class SecretSource:
    """One secret: its place in the config, its variable, its systemd credential."""

    table: tuple[str, ...]
    key: str
    env_var: str
    credential: str

    @property
    def dotted(self) -> str:
        return ".".join((*self.table, self.key))


SECRETS: tuple[SecretSource, ...] = (
    SecretSource(("store",), "password", "BRIDGE_STORE_PASSWORD", "store-password"),
    SecretSource(("inbound", "imap"), "password", "BRIDGE_IMAP_PASSWORD", "imap-password"),
    SecretSource(("outbound", "smtp"), "password", "BRIDGE_SMTP_PASSWORD", "smtp-password"),
    SecretSource(("tokens",), "secret", "BRIDGE_TOKEN_SECRET", "token-secret"),
)


class SecretError(Exception):
    """A secret could not be resolved; `bridge.config` turns this into a ConfigError."""

    def __init__(self, key: str, value: str, problem: str, *, from_environment: bool) -> None:
        super().__init__(f"{key} = {value}: {problem}")
        self.key = key
        self.value = value
        self.problem = problem
        self.from_environment = from_environment


def resolve_secrets(
    raw: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of `raw` with every secret resolved, and where those not in the file came from.

    The config file (the key itself or `<key>_file`, never both) wins over the
    environment variable, which wins over the systemd credential. An empty
    environment variable counts as unset, as systemd's `Environment=X=` would.
    The second result maps a dotted key to its variable or credential path, so
    that a later error about the value can point at the right place.
    """
    tables = copy.deepcopy(dict(raw))
    origins: dict[str, str] = {}
    for source in SECRETS:
        table = _table(tables, source.table)
        if table is None:
            continue  # not a table: the models report that with the key's name
        secret = _from_config(source, table)
        if secret is None and env.get(source.env_var):
            secret = env[source.env_var]
            origins[source.dotted] = f"${source.env_var}"
        if secret is None:
            secret = _from_credential(source, env)
            if secret is not None:
                origins[source.dotted] = f"$CREDENTIALS_DIRECTORY/{source.credential}"
        if secret is not None:
            table[source.key] = SecretStr(secret)
    return tables, origins


def _table(tables: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The (possibly new, empty) table at `path`, or None where a value is not a table."""
    current = tables
    for name in path:
        current = current.setdefault(name, {})
        if not isinstance(current, dict):
            return None
    return current


def _from_config(source: SecretSource, table: dict[str, Any]) -> str | None:
    file_key = f"{source.key}_file"
    inline = table.pop(source.key, None)
    path = table.pop(file_key, None)
    if inline is not None and path is not None:
        raise SecretError(
            f"{source.dotted}_file",
            _show_path(path),
            f"set either {source.key} or {file_key}, not both",
            from_environment=False,
        )
    if inline is not None:
        if not isinstance(inline, str):
            raise SecretError(source.dotted, REDACTED, "must be a string", from_environment=False)
        if not inline:
            raise SecretError(
                source.dotted,
                REDACTED,
                "is empty; remove the key to leave the secret unset",
                from_environment=False,
            )
        return inline
    if path is None:
        return None
    if not isinstance(path, str) or not path:
        raise SecretError(
            f"{source.dotted}_file",
            _show_path(path),
            "must be the path of a file holding the secret",
            from_environment=False,
        )
    return _read_secret_file(Path(path), f"{source.dotted}_file", from_environment=False)


def _from_credential(source: SecretSource, env: Mapping[str, str]) -> str | None:
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / source.credential
    if not path.exists():
        return None  # systemd passes only the credentials the unit loads
    return _read_secret_file(path, source.dotted, from_environment=True)


def _read_secret_file(path: Path, key: str, *, from_environment: bool) -> str:
    """The file's text without its final line ending; errors show the path, never content."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise SecretError(
            key, _show_path(path), f"cannot read: {reason}", from_environment=from_environment
        ) from err
    except UnicodeDecodeError:
        # The decode error's message quotes the offending bytes: do not chain it.
        raise SecretError(
            key, _show_path(path), "is not UTF-8 text", from_environment=from_environment
        ) from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise SecretError(key, _show_path(path), "file is empty", from_environment=from_environment)
    return secret


def _show_path(path: object) -> str:
    if isinstance(path, dict):
        return "{...}"  # a table might hold anything, a secret included
    return repr(str(path)) if isinstance(path, str | Path) else repr(path)
