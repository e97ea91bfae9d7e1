"""The config loader: defaults, the example file, one-line errors, and secrets."""

from __future__ import annotations

import tomllib
import traceback
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from bridge.config import ConfigError, Settings, load

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

# Long enough for tokens.secret, and distinctive enough to search for.
SECRET = "hunter2-correct-horse-battery"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(path, env=env or {})
    return caught.value


def full_text(err: BaseException) -> str:
    """Everything an operator could see: the message, the repr, the whole chained traceback."""
    return "".join(traceback.format_exception(err)) + repr(err)


# -- defaults and the example file --------------------------------------------------------


def test_no_file_gives_the_embedded_defaults() -> None:
    settings = load(None, env={})
    assert settings.store.url == "sqlite:///var/bridge.sqlite3"
    assert settings.store.blob_dir == Path("var/blobs")
    assert (settings.inbound.smtp.host, settings.inbound.smtp.port) == ("127.0.0.1", 2525)
    assert settings.inbound.smtp.enabled and not settings.inbound.imap.enabled
    assert settings.inbound.smtp.unix_socket is None
    assert settings.outbound.transport == "file"
    assert settings.outbound.file_dir == Path("var/outbox")
    assert settings.outbound.smtp.port == 587
    assert settings.log.level == "INFO"
    assert settings.tokens.address_format == "reply+{token}"
    assert settings.store.password is None
    assert settings.tokens.secret is None


def test_example_file_loads_to_exactly_the_defaults() -> None:
    assert load(EXAMPLE, env={}) == load(None, env={})


def _fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names |= _fields(inner, f"{prefix}{name}.")
        else:
            names.add(f"{prefix}{name}")
    return names


def _keys(table: dict[str, object], prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, value in table.items():
        if isinstance(value, dict):
            names |= _keys(value, f"{prefix}{name}.")
        else:
            names.add(f"{prefix}{name}")
    return names


def test_example_file_shows_every_key_and_every_secret_source() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    secrets = {"store.password", "inbound.imap.password", "outbound.smtp.password", "tokens.secret"}
    assert _keys(tomllib.loads(text)) == _fields(Settings) - secrets
    for name in ("STORE_PASSWORD", "IMAP_PASSWORD", "SMTP_PASSWORD", "TOKEN_SECRET"):
        assert f"BRIDGE_{name}" in text
    for credential in ("store-password", "imap-password", "smtp-password", "token-secret"):
        assert credential in text


def test_bridge_config_variable_names_the_file_when_no_path_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\ninstance_id = "from-env"\n')
    assert load(None, env={"BRIDGE_CONFIG": str(path)}).daemon.instance_id == "from-env"


def test_relative_paths_stay_relative(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[store]\nurl = "sqlite:///data/db.sqlite3"\nblob_dir = "data/blobs"\n'
        '[inbound.smtp]\nunix_socket = "run/bridge.sock"\n'
        '[outbound]\nfile_dir = "out"\n',
    )
    settings = load(path, env={})
    assert settings.store.blob_dir == Path("data/blobs")
    assert not settings.store.blob_dir.is_absolute()
    assert settings.inbound.smtp.unix_socket == Path("run/bridge.sock")
    assert settings.outbound.file_dir == Path("out")
    assert settings.store.url == "sqlite:///data/db.sqlite3"


def test_log_level_is_case_insensitive_and_stored_upper(tmp_path: Path) -> None:
    assert load(write(tmp_path, '[log]\nlevel = "debug"\n'), env={}).log.level == "DEBUG"


def test_settings_are_frozen() -> None:
    settings = load(None, env={})
    with pytest.raises(ValidationError):
        settings.outbound.smtp.port = 25  # type: ignore[misc]


def test_tls_with_both_existing_files_loads(tmp_path: Path) -> None:
    cert, key = write(tmp_path, "cert", "cert.pem"), write(tmp_path, "key", "key.pem")
    path = write(
        tmp_path,
        f'[inbound.smtp]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        "require_starttls = true\n",
    )
    smtp = load(path, env={}).inbound.smtp
    assert (smtp.tls_cert_file, smtp.tls_key_file, smtp.require_starttls) == (cert, key, True)


# -- errors ---------------------------------------------------------------------------------


def bad(key: str, toml: str, shown: str, problem: str, extra: str = "") -> tuple[str, ...]:
    """A config setting `key` to the TOML value `toml`, and the error it must give."""
    table, _, name = key.rpartition(".")
    header = f"[{table}]\n" if table else ""
    return (f"{header}{name} = {toml}\n{extra}", key, shown, problem)


BAD_CONFIGS = [
    bad("outbound.smtp.port", "70000", "70000", "must be between 1 and 65535"),
    bad("inbound.smtp.port", "0", "0", "must be between 1 and 65535"),
    bad("inbound.smtp.port", '"2525"', "'2525'", "must be an integer"),
    bad("inbound.smtp.max_message_size", "true", "True", "must be an integer"),
    bad("inbound.smtp.protocol", '"esmtp"', "'esmtp'", "must be 'smtp' or 'lmtp'"),
    bad("log.level", '"verbose"', "'verbose'", "one of DEBUG, INFO, WARNING, ERROR"),
    bad("log.format", '"xml"', "'xml'", "must be 'plain' or 'json'"),
    bad("daemon.shutdown_grace_seconds", "0", "0", "must be greater than 0"),
    bad("daemon.shutdown_grace_seconds", "inf", "inf", "must be a finite number"),
    bad("outbound.hourly_cap", "0", "0", "must be at least 1"),
    bad("outbound.coalesce_window_seconds", "-1", "-1", "must be at least 0"),
    bad("outbound.from_address", '"nobody"', "'nobody'", "must be a plain address"),
    bad("outbound.file_dir", '""', "''", "must not be empty"),
    bad("outbound.file_dir", "5", "5", "must be a string"),
    bad("outbound.smtp.concurrency", "65", "65", "must be between 1 and 64"),
    bad("outbound.smtp.verify_certificates", '"no"', "'no'", "must be true or false"),
    bad("store.url", '"mysql://db/b"', "'mysql://db/b'", "must start with sqlite: or postgresql:"),
    bad("tokens.address_format", '"r+{token}+{token}"', "'r+{token}+{token}'", "exactly once"),
    bad("tokens.address_format", '"reply {token}"', "'reply {token}'", "local part"),
    bad("tokens.lifetime_days", "0", "0", "must be at least 1"),
    bad("inbound.smtp.require_starttls", "true", "True", "needs tls_cert_file"),
    bad("inbound.smtp.tls_cert_file", '"no.pem"', "'no.pem'", "no such file", 'tls_key_file = "k"'),
    bad("inbound.smtp", "5", "5", "must be a table"),
    bad("daemon.instanceid", '"a"', "'a'", "unknown key"),
    bad("colour", '"blue"', "'blue'", "unknown key"),
    ("[inbound.imap]\nenabled = true\n", "inbound.imap.host", "''", "must be set when"),
]


@pytest.mark.parametrize(("text", "key", "value", "problem"), BAD_CONFIGS)
def test_bad_config_gives_one_line_naming_file_key_and_value(
    tmp_path: Path, text: str, key: str, value: str, problem: str
) -> None:
    path = write(tmp_path, text + "\n")
    err = load_error(path)
    assert (err.file, err.key, err.value) == (str(path), key, value)
    assert problem in err.problem
    assert str(err) == f"{path}: {key} = {value}: {err.problem}"
    assert "\n" not in str(err)


def test_long_values_are_shortened(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, f'[outbound]\nfrom_address = "{"x" * 200}"\n'))
    assert err.key == "outbound.from_address"
    assert err.value.endswith("...")
    assert len(err.value) <= 60


def test_unknown_table_hides_its_contents(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, f'[outbond.smtp]\npassword = "{SECRET}"\n'))
    assert (err.key, err.problem) == ("outbond", "unknown key")
    assert SECRET not in full_text(err)


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\ninstance_id = "a"\nshutdown_grace_seconds = = 3\n')
    err = load_error(path)
    assert (err.file, err.line) == (str(path), 3)
    assert err.column is not None
    assert str(err).startswith(f"{path}:3:{err.column}: TOML syntax error")
    assert "\n" not in str(err)


def test_missing_named_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    err = load_error(path)
    assert err.file == str(path)
    assert str(err) == f"{path}: no such file"


def test_store_url_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, f'[store]\nurl = "postgresql://bridge:{SECRET}@db/b"\n'))
    assert err.key == "store.url"
    assert "store.password_file" in err.problem
    assert "postgresql://bridge:***@db/b" in err.value
    assert SECRET not in full_text(err)


def test_tls_cert_without_key_is_an_error(tmp_path: Path) -> None:
    cert = write(tmp_path, "cert", "cert.pem")
    err = load_error(write(tmp_path, f'[inbound.smtp]\ntls_cert_file = "{cert}"\n'))
    assert err.key == "inbound.smtp.tls_key_file"
    assert "tls_cert_file" in err.problem


# -- secrets --------------------------------------------------------------------------------

SECRET_SOURCES = [
    ("store", "password", "BRIDGE_STORE_PASSWORD", "store-password"),
    ("inbound.imap", "password", "BRIDGE_IMAP_PASSWORD", "imap-password"),
    ("outbound.smtp", "password", "BRIDGE_SMTP_PASSWORD", "smtp-password"),
    ("tokens", "secret", "BRIDGE_TOKEN_SECRET", "token-secret"),
]


def secret_at(settings: Settings, table: str, key: str) -> str | None:
    node: object = settings
    for name in (*table.split("."), key):
        node = getattr(node, name)
    assert node is None or isinstance(node, SecretStr)
    return None if node is None else node.get_secret_value()


@pytest.mark.parametrize(("table", "key", "env_var", "credential"), SECRET_SOURCES)
def test_each_secret_comes_from_each_of_its_four_sources(
    tmp_path: Path, table: str, key: str, env_var: str, credential: str
) -> None:
    inline = write(tmp_path, f'[{table}]\n{key} = "{SECRET}-inline"\n', "inline.toml")
    assert secret_at(load(inline, env={}), table, key) == f"{SECRET}-inline"

    secret_file = write(tmp_path, f"{SECRET}-file\n", "secret.txt")
    by_file = write(tmp_path, f'[{table}]\n{key}_file = "{secret_file}"\n', "file.toml")
    assert secret_at(load(by_file, env={}), table, key) == f"{SECRET}-file"

    assert secret_at(load(None, env={env_var: f"{SECRET}-env"}), table, key) == f"{SECRET}-env"

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write(credentials, f"{SECRET}-credential\n", credential)
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert secret_at(load(None, env=env), table, key) == f"{SECRET}-credential"


@pytest.mark.parametrize(
    ("in_file", "in_env", "expected"),
    [(True, True, "file"), (False, True, "env"), (False, False, "credential")],
)
def test_secret_precedence_is_file_then_environment_then_credential(
    tmp_path: Path, in_file: bool, in_env: bool, expected: str
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write(credentials, f"{SECRET}-credential", "smtp-password")
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    if in_env:
        env["BRIDGE_SMTP_PASSWORD"] = f"{SECRET}-env"
    text = f'[outbound.smtp]\npassword = "{SECRET}-file"\n' if in_file else ""
    settings = load(write(tmp_path, text), env=env)
    assert secret_at(settings, "outbound.smtp", "password") == f"{SECRET}-{expected}"


def test_empty_environment_variable_and_missing_credential_leave_a_secret_unset(
    tmp_path: Path,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    env = {"BRIDGE_STORE_PASSWORD": "", "CREDENTIALS_DIRECTORY": str(credentials)}
    assert load(None, env=env).store.password is None


def test_secret_given_inline_and_as_file_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path, f'[store]\npassword = "{SECRET}"\npassword_file = "/run/store-password"\n'
    )
    err = load_error(path)
    assert (err.file, err.key) == (str(path), "store.password_file")
    assert "not both" in err.problem
    assert SECRET not in full_text(err)


def test_unreadable_secret_file_names_the_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    err = load_error(write(tmp_path, f'[tokens]\nsecret_file = "{missing}"\n'))
    assert (err.key, err.value) == ("tokens.secret_file", repr(str(missing)))
    assert "cannot read" in err.problem


def test_unreadable_credential_is_an_environment_error(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "imap-password").mkdir()  # exists, but cannot be read as a file
    with pytest.raises(ConfigError) as caught:
        load(None, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    err = caught.value
    assert (err.file, err.key) == ("<environment>", "inbound.imap.password")
    assert "cannot read" in err.problem


def test_secrets_never_appear_in_repr_or_str_of_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[store]\npassword = "{SECRET}-1"\n[inbound.imap]\npassword = "{SECRET}-2"\n'
        f'[outbound.smtp]\npassword = "{SECRET}-3"\n[tokens]\nsecret = "{SECRET}-4"\n',
    )
    settings = load(path, env={})
    assert secret_at(settings, "tokens", "secret") == f"{SECRET}-4"
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert SECRET not in shown


@pytest.mark.parametrize(
    "text",
    [
        "[store]\npassword = 12345678901234567890\n",
        '[store]\npassword = "{s}"\nblob_dir = ""\n',
        '[tokens]\nsecret = "{s}"\nlifetime_days = 0\n',
        '[tokens]\nsecret = "{short}"\n',
        '[outbound.smtp]\npassword = ""\n',
        '[daemon]\npassword = "{s}"\n',
    ],
)
def test_secrets_never_appear_in_error_messages(tmp_path: Path, text: str) -> None:
    short = "tiny-secret"
    err = load_error(write(tmp_path, text.format(s=SECRET, short=short)))
    shown = full_text(err)
    assert SECRET not in shown
    assert short not in shown
    assert "12345678901234567890" not in shown
    assert err.key  # the error still says where the problem is


def test_short_token_secret_is_refused_as_a_secret(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, '[tokens]\nsecret = "tiny-secret"\n'))
    assert (err.key, err.value) == ("tokens.secret", "<secret>")
    assert "at least 16 bytes" in err.problem


def test_bad_secret_from_the_environment_names_its_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[tokens]\nlifetime_days = 7\n")
    err = load_error(path, env={"BRIDGE_TOKEN_SECRET": "tiny-secret"})
    assert (err.file, err.key, err.value) == ("<environment>", "tokens.secret", "<secret>")
    assert "$BRIDGE_TOKEN_SECRET" in err.problem
    assert "tiny-secret" not in full_text(err)
