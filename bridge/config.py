"""bridge's configuration: one TOML file in, typed, validated, frozen settings out.

`load()` reads the file named by the CLI (or by `BRIDGE_CONFIG`; with neither it
uses the embedded defaults, so `make run` works on a bare checkout), resolves
the four secrets (see `bridge._config_secrets`) and validates everything into
`Settings`. Every problem becomes one `ConfigError` whose one-line message names
the file, the dotted key and the bad value; secrets are never shown.

This module does not act on the settings: it opens no socket, creates no
directory and does not resolve relative paths (they stay relative to the
working directory, as a sysadmin wrote them). `config.example.toml` documents
every key with its default.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from bridge._config_secrets import REDACTED, SecretError, resolve_secrets
from bridge.errors import BridgeError
from bridge.policy.tokens import MIN_SECRET_BYTES

CONFIG_ENV_VAR = "BRIDGE_CONFIG"
DEFAULTS_SOURCE = "<defaults>"
ENVIRONMENT_SOURCE = "<environment>"
_VALUE_WIDTH = 60


class ConfigError(BridgeError):
    """The configuration cannot be used. `str()` is one line, ready for a sysadmin.

    `file` is the config path, `<defaults>` or `<environment>`; `key` is dotted
    (empty when the problem is the whole file); `value` is the repr of the bad
    value, shortened, or `<secret>`. `line`/`column` are set for TOML syntax errors.
    """

    def __init__(
        self,
        file: str,
        key: str,
        value: str,
        problem: str,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.value = value
        self.problem = " ".join(problem.split())
        self.line = line
        self.column = column
        where = file if line is None else f"{file}:{line}:{column}"
        if key:
            super().__init__(f"{where}: {key} = {value}: {self.problem}")
        else:
            super().__init__(f"{where}: {self.problem}")


# -- value types ------------------------------------------------------------------------


def _between(low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return AfterValidator(check)


def _path(value: object) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string (a path)")
    if not value:
        raise ValueError("must not be empty")
    return Path(value)


def _optional_path(value: object) -> Path | None:
    return None if value in ("", None) else _path(value)


def _list_to_tuple(value: object) -> object:
    # TOML arrays arrive as lists; settings are frozen, so they are kept as tuples.
    return tuple(value) if isinstance(value, list) else value


def _log_level(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)} (any case)")
    return value.upper()


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_Port = Annotated[int, _between(1, 65535)]
_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_AtLeastOne = Annotated[int, Field(ge=1)]
# A relative path stays relative: it is resolved against the working directory on use.
_PathValue = Annotated[Path, PlainValidator(_path)]
_OptionalPath = Annotated[Path | None, PlainValidator(_optional_path)]

# RFC 5322 "atext" without the braces (which str.format would read), joined by dots.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`|~]+"
_LOCAL_PART = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_STORE_SCHEMES = ("sqlite", "postgresql")


def _invalid(field: str, value: object, problem: str) -> PydanticCustomError:
    """A cross-field error that names the field at fault, not the whole table."""
    shown = str(value) if isinstance(value, Path) else value
    return PydanticCustomError(
        "bridge_field", "{field}: {problem}", {"field": field, "problem": problem, "value": shown}
    )


# -- the settings -----------------------------------------------------------------------


class _Table(BaseModel):
    # strict: TOML has types, so "2525" for a port is a mistake to report, not coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)


class DaemonSettings(_Table):
    instance_id: str = ""
    shutdown_grace_seconds: _Seconds = 30.0


class LogSettings(_Table):
    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], PlainValidator(_log_level)] = (
        "INFO"
    )
    format: Literal["plain", "json"] = "plain"


class StoreSettings(_Table):
    url: str = "sqlite:///var/bridge.sqlite3"
    password: SecretStr | None = None
    blob_dir: _PathValue = Path("var/blobs")

    @field_validator("url")
    @classmethod
    def _supported_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in _STORE_SCHEMES:
            raise ValueError("must start with sqlite: or postgresql:")
        if parts.password:
            # Keeps the password out of every repr and log line that shows the URL.
            raise ValueError(
                "must not hold a password: use store.password_file or BRIDGE_STORE_PASSWORD"
            )
        return url


class InboundSmtpSettings(_Table):
    enabled: bool = True
    protocol: Literal["smtp", "lmtp"] = "smtp"
    host: str = "127.0.0.1"
    port: _Port = 2525
    unix_socket: _OptionalPath = None
    max_message_size: _AtLeastOne = 26_214_400
    tls_cert_file: _OptionalPath = None
    tls_key_file: _OptionalPath = None
    require_starttls: bool = False

    @model_validator(mode="after")
    def _tls_is_complete(self) -> Self:
        cert, key = self.tls_cert_file, self.tls_key_file
        if cert is not None and key is None:
            raise _invalid("tls_key_file", "", "must be set when tls_cert_file is set")
        if key is not None and cert is None:
            raise _invalid("tls_cert_file", "", "must be set when tls_key_file is set")
        for name, path in (("tls_cert_file", cert), ("tls_key_file", key)):
            if path is not None and not path.is_file():
                raise _invalid(name, path, "no such file")
        if self.require_starttls and cert is None:
            raise _invalid("require_starttls", True, "needs tls_cert_file and tls_key_file")
        return self


class InboundImapSettings(_Table):
    enabled: bool = False
    host: str = ""
    port: _Port = 993
    security: Literal["tls", "starttls", "none"] = "tls"
    verify_certificates: bool = True
    username: str = ""
    password: SecretStr | None = None
    mailbox: str = "INBOX"
    processed_folder: str = "bridge-processed"
    poll_interval_seconds: _Seconds = 60.0
    idle: bool = True

    @model_validator(mode="after")
    def _host_when_enabled(self) -> Self:
        if self.enabled and not self.host:
            raise _invalid("host", self.host, "must be set when inbound.imap.enabled is true")
        return self


class InboundPipelineSettings(_Table):
    poll_interval_seconds: _Seconds = 1.0
    batch_size: Annotated[int, _between(1, 1000)] = 20
    lease_seconds: _Seconds = 300.0
    max_attempts: _AtLeastOne = 5
    max_attachments: Annotated[int, Field(ge=0)] = 10
    max_attachment_bytes: _AtLeastOne = 10_485_760
    max_total_attachment_bytes: _AtLeastOne = 20_971_520
    sender_limit_per_hour: _AtLeastOne = 30
    thread_limit_per_hour: _AtLeastOne = 60
    require_authentication: bool = False
    trusted_authserv_ids: Annotated[tuple[str, ...], BeforeValidator(_list_to_tuple)] = ()

    @model_validator(mode="after")
    def _authserv_when_required(self) -> Self:
        if self.require_authentication and not self.trusted_authserv_ids:
            raise _invalid(
                "trusted_authserv_ids",
                list(self.trusted_authserv_ids),
                "must name the MTA's authserv-id when require_authentication is true",
            )
        return self


class InboundSettings(_Table):
    smtp: InboundSmtpSettings = Field(default_factory=InboundSmtpSettings)
    imap: InboundImapSettings = Field(default_factory=InboundImapSettings)
    pipeline: InboundPipelineSettings = Field(default_factory=InboundPipelineSettings)


class OutboundSmtpSettings(_Table):
    host: str = "localhost"
    port: _Port = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    verify_certificates: bool = True
    username: str = ""
    password: SecretStr | None = None
    concurrency: Annotated[int, _between(1, 64)] = 4
    timeout_seconds: _Seconds = 30.0
    # CA bundle to trust instead of the system's (a relay with a private CA).
    ca_file: _OptionalPath = None
    # Name to announce in EHLO; "" = this host's fully qualified name.
    helo_hostname: str = ""


class OutboundSettings(_Table):
    transport: Literal["file", "smtp"] = "file"
    file_dir: _PathValue = Path("var/outbox")
    from_address: str = "no-reply@localhost"
    coalesce_window_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 60.0
    hourly_cap: _AtLeastOne = 20
    retry_horizon_hours: _Seconds = 48.0
    retry_base_seconds: _Seconds = 60.0
    retry_max_seconds: _Seconds = 3600.0
    poll_interval_seconds: _Seconds = 1.0
    batch_size: Annotated[int, _between(1, 1000)] = 50
    lease_seconds: _Seconds = 300.0
    smtp: OutboundSmtpSettings = Field(default_factory=OutboundSmtpSettings)

    @field_validator("from_address")
    @classmethod
    def _looks_like_an_address(cls, address: str) -> str:
        local, at, domain = address.rpartition("@")
        if not (at and _LOCAL_PART.fullmatch(local) and _DOMAIN.fullmatch(domain)):
            raise ValueError("must be a plain address like no-reply@example.org")
        return address


class TokenSettings(_Table):
    secret: SecretStr | None = None
    lifetime_days: _AtLeastOne = 30
    address_format: str = "reply+{token}"

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        # Refused here, at start-up, rather than when the first token is issued.
        if secret is not None and len(secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes long")
        return secret

    @field_validator("address_format")
    @classmethod
    def _one_token_in_a_local_part(cls, template: str) -> str:
        if template.count("{token}") != 1:
            raise ValueError("must contain {token} exactly once")
        if not _LOCAL_PART.fullmatch(template.replace("{token}", "t")):
            raise ValueError(
                "may hold only letters, digits, single inner dots and !#$%&'*+-/=?^_`|~"
                " around {token} (it is the local part of an address)"
            )
        return template


_DAILY_AT = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")


class JobSchedule(_Table):
    """When a job runs: every N seconds, or (every_seconds = 0) once a day at HH:MM UTC."""

    every_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    daily_at: str = "03:30"

    @field_validator("daily_at")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        if not _DAILY_AT.fullmatch(value):
            raise ValueError('must be a time of day "HH:MM" (UTC)')
        return value


class RetentionSettings(_Table):
    purge: JobSchedule = Field(default_factory=JobSchedule)
    housekeeping: JobSchedule = Field(default_factory=lambda: JobSchedule(every_seconds=300.0))
    batch_size: Annotated[int, _between(1, 100_000)] = 200
    lease_seconds: _Seconds = 600.0
    raw_inbound_days: _AtLeastOne = 30
    sent_outbox_days: _AtLeastOne = 90
    prune_audit_events: bool = False
    audit_events_days: _AtLeastOne = 2190


class HealthSettings(_Table):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: _Port = 9187


class Settings(_Table):
    """Everything bridge reads from its config, validated. Secrets are `SecretStr`."""

    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    inbound: InboundSettings = Field(default_factory=InboundSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)


# -- loading ----------------------------------------------------------------------------


def load(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """The settings from `path` (else `$BRIDGE_CONFIG`, else the defaults) and `env`.

    `env` defaults to `os.environ`; it supplies `BRIDGE_CONFIG`, the secrets'
    variables and `CREDENTIALS_DIRECTORY`. Raises `ConfigError`.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV_VAR):
        path = Path(env[CONFIG_ENV_VAR])
    source = DEFAULTS_SOURCE if path is None else str(path)
    raw = {} if path is None else _read_toml(path)
    try:
        tables, origins = resolve_secrets(raw, env)
    except SecretError as err:
        file = ENVIRONMENT_SOURCE if err.from_environment else source
        raise ConfigError(file, err.key, err.value, err.problem) from err
    try:
        return Settings.model_validate(tables)
    except ValidationError as err:
        # hide_input_in_errors keeps values (secrets included) out of the chained error.
        raise _config_error(err.errors(include_url=False)[0], source, origins) from err


def _read_toml(path: Path) -> dict[str, Any]:
    file = str(path)
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError as err:
        raise ConfigError(file, "", "", "no such file") from err
    except OSError as err:
        raise ConfigError(file, "", "", f"cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError:
        raise ConfigError(file, "", "", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        # Python 3.11's error has no position attributes; its message ends with them.
        found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", str(err))
        if found is None:
            raise ConfigError(file, "", "", f"TOML syntax error: {err}") from err
        problem, line, column = found.groups()
        raise ConfigError(
            file, "", "", f"TOML syntax error: {problem}", line=int(line), column=int(column)
        ) from err


def _config_error(error: ErrorDetails, source: str, origins: Mapping[str, str]) -> ConfigError:
    names = [str(part) for part in error["loc"]]
    value: object = error["input"]
    context = error.get("ctx", {})
    if error["type"] == "bridge_field":
        names.append(context["field"])
        value = context["value"]
    key, problem = ".".join(names), _problem(error)
    if key in origins:  # a secret that came from the environment, not from the file
        source, problem = ENVIRONMENT_SOURCE, f"{problem} (from {origins[key]})"
    return ConfigError(source, key, _show(names, value), problem)


def _problem(error: ErrorDetails) -> str:
    context = error.get("ctx", {})
    kind = error["type"]
    fixed = {
        "extra_forbidden": "unknown key",
        "string_type": "must be a string",
        "int_type": "must be an integer",
        "float_type": "must be a number",
        "bool_type": "must be true or false",
        "model_type": "must be a table",
        "finite_number": "must be a finite number",
    }
    if kind in fixed:
        return fixed[kind]
    if kind in ("value_error", "bridge_field"):
        return str(context.get("error", context.get("problem", error["msg"])))
    if kind == "literal_error":
        return f"must be {context['expected']}"
    bounds = {
        "greater_than": ("greater than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }
    if kind in bounds:
        words, name = bounds[kind]
        return f"must be {words} {_number(context[name])}"
    return error["msg"]


def _number(bound: object) -> object:
    return int(bound) if isinstance(bound, float) and bound.is_integer() else bound


def _show(names: list[str], value: object) -> str:
    """The bad value as a short repr, with anything that may be a secret blanked out."""
    if names and re.search(r"pass|secret|credential|token$", names[-1], re.IGNORECASE):
        return REDACTED
    if isinstance(value, dict):
        return "{...}"  # a mistyped table may hold a secret
    text = repr(value)
    # A URL's user:password@ keeps the user and loses the password.
    text = re.sub(r"(://[^/@:\s]*:)[^/@\s]*@", r"\1***@", text)
    if len(text) > _VALUE_WIDTH:
        text = text[: _VALUE_WIDTH - 3] + "..."
    return text
