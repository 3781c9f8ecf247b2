"""Config loading and validation (homeserver.config) and the sample config (config_template)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.config import (
    AuthConfig,
    Config,
    ConfigError,
    Duration,
    PluginConfig,
    PushersConfig,
    Size,
    load_config,
    parse_config,
)
from homeserver.config_template import render_config
from plugins.backup.config import BackupConfig, parse_backup_config
from plugins.calls.config import CallsConfig, parse_calls_config
from plugins.push.config import DeliveryConfig, parse_delivery_config

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "config" / "homeserver.yaml"


def write_config(tmp_path: Path, raw: dict[str, Any], name: str = "hs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def minimal(**extra: Any) -> dict[str, Any]:
    return {"server_name": "example.org", **extra}


def test_sample_config_loads() -> None:
    config = load_config(SAMPLE, env={})
    assert config.server_name == "localhost:8008"
    assert config.listen.bind == "127.0.0.1" and config.listen.port == 8008
    assert config.registration.enabled is True
    assert config.auth.access_token_lifetime == 3_600_000
    assert config.auth.non_refreshable_token_lifetime == 365 * 86_400_000
    assert config.email.smtp.timeout == 10_000
    assert config.limits.max_request_body_size == 1024 * 1024
    assert config.rate_limits.login_per_ip.per_second == 0.2
    assert config.rate_limits.login_per_ip.burst == 10
    assert [p.module for p in config.plugins] == [
        "plugins.example.ExamplePlugin",
        "plugins.media.MediaPlugin",
        "plugins.push.gateway.PushGatewayPlugin",
        "plugins.push.PushPlugin",
        "plugins.calls.CallsPlugin",
        "plugins.backup.BackupPlugin",
    ]
    assert config.plugins[0] == PluginConfig("plugins.example.ExamplePlugin", {"greeting": "Hello"})
    # The sample writes down every default of the pushers and the push plugin.
    assert config.pushers == PushersConfig()
    assert parse_delivery_config(config.plugins[3].config) == DeliveryConfig()
    assert parse_calls_config(config.plugins[4].config) == CallsConfig()
    assert parse_backup_config(config.plugins[5].config, env={}) == BackupConfig()
    assert config.source == str(SAMPLE)


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, minimal(data_dir=str(tmp_path / "d"))), env={})
    assert config.database.url == f"sqlite:///{(tmp_path / 'd' / 'homeserver.db').as_posix()}"
    assert config.public_baseurl == "http://127.0.0.1:8008/"
    assert config.base_url == "http://127.0.0.1:8008"
    assert config.signing_key_file == tmp_path / "d" / "signing.key"
    assert config.registration.enabled is False
    assert config.auth.password_hashing == "interactive"
    assert config.plugins == []

    config = parse_config(minimal(listen={"bind": "0.0.0.0", "port": 9000}), "x.yaml", env={})
    assert config.public_baseurl == "http://0.0.0.0:9000/"
    assert config.database.url == "sqlite:///data/homeserver.db"


def test_durations_and_sizes_are_parsed() -> None:
    config = parse_config(
        minimal(
            auth={"access_token_lifetime": "500ms", "refresh_token_lifetime": 90},
            email={"token_lifetime": "5m", "smtp": {"timeout": "2h"}},
            limits={"max_request_body_size": "512K"},
        ),
        env={},
    )
    assert config.auth.access_token_lifetime == 500
    assert isinstance(config.auth.access_token_lifetime, Duration)
    assert config.auth.refresh_token_lifetime == 90_000
    assert config.email.token_lifetime == 300_000
    assert config.email.smtp.timeout == 7_200_000
    assert config.limits.max_request_body_size == 512 * 1024
    assert isinstance(config.limits.max_request_body_size, Size)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (minimal(unknown_thing=1), "unknown_thing"),
        (minimal(listen={"prot": 80}), "listen.prot"),
        (minimal(email={"smtp": {"hots": "x"}}), "email.smtp.hots"),
        (
            minimal(rate_limits={"login_per_ip": {"per_second": 1, "brust": 2}}),
            "rate_limits.login_per_ip.brust",
        ),
        (minimal(listen={"port": "x"}), "listen.port"),
        (minimal(registration={"enabled": "yes"}), "registration.enabled"),
        (minimal(registration={"password_min_length": True}), "registration.password_min_length"),
        (minimal(registration={"tokens": "abc"}), "registration.tokens"),
        (minimal(registration={"tokens": ["ok", 5]}), "registration.tokens[1]"),
        (minimal(auth={"access_token_lifetime": "1 hour"}), "auth.access_token_lifetime"),
        (minimal(email={"smtp": {"timeout": "soon"}}), "email.smtp.timeout"),
        (minimal(limits={"max_request_body_size": "lots"}), "limits.max_request_body_size"),
        (minimal(auth={"password_hashing": "slow"}), "auth.password_hashing"),
        (minimal(listen={"port": 70000}), "listen.port"),
        (minimal(listen=5), "listen"),
        (minimal(listen={"max_connections_per_ip": 0}), "listen.max_connections_per_ip"),
        (minimal(listen={"max_connections": -1}), "listen.max_connections"),
        (minimal(listen={"max_connections": "many"}), "listen.max_connections"),
        (minimal(database={"url": "mysql://x"}), "database.url"),
        (minimal(plugins=[{"config": {}}]), "plugins[0].module"),
        ({"listen": {"port": 8008}}, "server_name"),
        ({"server_name": ""}, "server_name"),
        ({"server_name": "bad name!"}, "server_name"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, raw: dict[str, Any], key: str) -> None:
    path = write_config(tmp_path, raw, "my-homeserver.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert f"'{key}'" in message, message


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server_name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, env={})
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listing, env={})


def test_env_overrides_win(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        minimal(
            database={"url": "sqlite:///from/file.db", "pool_max": 3},
            auth={"jwt_secret": "file-secret", "password_hashing": "fast"},
            email={"smtp": {"host": "smtp.file", "password": "file-password"}},
        ),
    )
    env = {
        "HOMESERVER_DATABASE_URL": "postgresql://u@db:5432/hs",
        "HOMESERVER_JWT_SECRET": "env-secret",
        "HOMESERVER_SMTP_PASSWORD": "env-password",
        "HOMESERVER_SMTP_USERNAME": "env-user",
    }
    config = load_config(path, env=env)
    assert config.database.url == "postgresql://u@db:5432/hs"
    assert config.auth.jwt_secret == "env-secret"
    assert config.email.smtp.password == "env-password"
    assert config.email.smtp.username == "env-user"
    # Keys the environment does not name are kept from the file.
    assert config.database.pool_max == 3
    assert config.auth.password_hashing == "fast"
    assert config.email.smtp.host == "smtp.file"

    # Sections missing from the file are created; empty variables are ignored.
    config = load_config(
        write_config(tmp_path, minimal(), "min.yaml"),
        env={"HOMESERVER_SMTP_PASSWORD": "p", "HOMESERVER_JWT_SECRET": ""},
    )
    assert config.email.smtp.password == "p"
    assert config.auth.jwt_secret is None


def test_env_override_is_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'database.url'"):
        load_config(write_config(tmp_path, minimal()), env={"HOMESERVER_DATABASE_URL": "mysql://x"})


def test_env_defaults_to_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMESERVER_JWT_SECRET", "from-process-env")
    assert load_config(write_config(tmp_path, minimal())).auth.jwt_secret == "from-process-env"


def test_config_is_frozen() -> None:
    config = parse_config(minimal(), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server_name = "other"  # type: ignore[misc]
    assert isinstance(config.auth, AuthConfig)


# The sample config documents every setting -------------------------------------


def _yaml_key_lines(text: str) -> tuple[dict[str, int], list[int], list[int]]:
    """Map dotted key paths to line numbers (list items as `name[]`, flow maps included).

    Also returns the indent of every line (-1 for blank lines) and the comment line numbers.
    """
    paths: dict[str, int] = {}
    indents: list[int] = []
    comments: list[int] = []
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines()):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        indents.append(indent if stripped else -1)
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments.append(number)
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        content = stripped
        if content.startswith("- "):
            stack.append((indent, "[]"))
            content = content[2:]
            indent += 2
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*):(.*)$", content)
        if not m:
            continue
        key, rest = m.group(1), m.group(2).strip()
        stack.append((indent, key))
        path = ".".join(name for _, name in stack).replace(".[]", "[]")
        paths[path] = number
        flow = re.fullmatch(r"\{(.*)\}", rest)
        if flow:
            for inner in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*:", flow.group(1)):
                paths[f"{path}.{inner}"] = number
    return paths, indents, comments


def _settings(cls: type, prefix: str = "") -> list[tuple[str, bool]]:
    """Every (dotted path, is a section) of a config dataclass, recursively."""
    out: list[tuple[str, bool]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        hint = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            out.append((path, True))
            out += _settings(hint, path + ".")  # type: ignore[arg-type]
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            out.append((path, True))
            out += _settings(typing.get_args(hint)[0], path + "[].")
        else:
            out.append((path, False))
    return out


def test_every_setting_is_in_the_sample_with_a_comment() -> None:
    lines = SAMPLE.read_text().splitlines()
    paths, indents, comments = _yaml_key_lines(SAMPLE.read_text())

    def block(line: int) -> range:
        """The lines under the key on `line`: up to the next line indented no deeper."""
        end = line + 1
        while end < len(lines) and (indents[end] == -1 or indents[end] > indents[line]):
            end += 1
        return range(line + 1, end)

    def comment_above(line: int) -> bool:
        return line - 1 in comments

    settings = _settings(Config)
    assert len(settings) > 40
    missing = [path for path, _ in settings if path not in paths]
    assert missing == [], f"settings absent from {SAMPLE}: {missing}"

    undocumented = []
    for path, is_section in settings:
        line = paths[path]
        documented = comment_above(line)
        if is_section:
            documented = documented or any(n in comments for n in block(line))
        elif "." in path:
            section = path.rsplit(".", 1)[0].removesuffix("[]")
            documented = documented or any(n in comments for n in block(paths[section]))
        if not documented:
            undocumented.append(path)
    assert undocumented == [], f"settings without a comment in {SAMPLE}: {undocumented}"


def test_sample_values_are_the_defaults() -> None:
    """Apart from the make-run choices, the sample lists each setting with its default."""
    sample = load_config(SAMPLE, env={})
    defaults = parse_config({"server_name": "localhost:8008"}, str(SAMPLE), env={})
    assert dataclasses.replace(
        sample, registration=dataclasses.replace(sample.registration, enabled=False), plugins=[]
    ) == dataclasses.replace(defaults, source=sample.source)


def test_render_config_with_make_run_defaults_is_the_sample() -> None:
    rendered = render_config("localhost:8008", open_registration=True)
    assert rendered.encode("utf-8") == SAMPLE.read_bytes()


def test_render_config_reflects_arguments(tmp_path: Path) -> None:
    text = render_config(
        "chat.example.org",
        port=8448,
        bind="0.0.0.0",
        data_dir="/var/lib/hs",
        database_url="postgresql://hs@db/hs",
        public_baseurl="https://chat.example.org/",
        require_email_verification=True,
        plugins="",
    )
    path = tmp_path / "rendered.yaml"
    path.write_text(text)
    config = load_config(path, env={})
    assert config.server_name == "chat.example.org"
    assert (config.listen.bind, config.listen.port) == ("0.0.0.0", 8448)
    assert config.data_dir == "/var/lib/hs"
    assert config.database.url == "postgresql://hs@db/hs"
    assert config.public_baseurl == "https://chat.example.org/"
    assert config.registration.enabled is False
    assert config.registration.require_email_verification is True
    assert config.plugins == []
