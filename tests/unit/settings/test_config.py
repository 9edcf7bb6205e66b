"""Endpoint settings (m3migrate/settings/endpoints.py): URL checks named by field, secrets that never show, what a
migration's state keeps of them and how a resumed step gets the rest back. No servers.

Malformed URLs hiding passwords are fuzzed in tests/unit/settings/test_url_secrets.py; here the plain contract. As in
Prometheus' remote_read/remote_write config, URLs are full http(s) endpoint URLs and credentials go in the
auth settings (basic auth or a bearer token, not both; Prometheus' HTTPClientConfig refuses both too).
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from m3migrate.errors import ConfigError
from m3migrate.settings.endpoints import (
    AuthSettings,
    SourceSettings,
    TargetSettings,
    TlsSettings,
    api_base,
    check_http_url,
    saved_settings,
    settings_from_saved,
)
from m3migrate.settings.spec import format_validation_error

READ = "http://m3:7201/api/v1/prom/remote/read"
WRITE = "http://receive:19291/api/v1/receive"
SECRET = "Pa55-w0rd-n3ver-shown"
TOKEN = "t0ken-n3ver-shown"


# -- URLs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://m3:7201/api/v1/read", "must start with http:// or https://"),
        ("m3:7201/api/v1/read", "must start with http:// or https://"),
        ("http:///api/v1/read", "has no host"),
        ("http://m3:0/api/v1/read", "invalid port"),
        ("http://m3:65536/api/v1/read", "invalid port"),
        ("http://m3:port/api/v1/read", "invalid port"),
        ("http://user@m3:7201/api/v1/read", "must not carry credentials"),
    ],
)
def test_a_url_that_cannot_work_is_refused_naming_the_field(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        check_http_url(url, "target write_url")
    assert str(caught.value).startswith("target write_url")


@pytest.mark.parametrize("url", ["http://m3:1/x", "HTTPS://m3:65535/x", "http://[::1]:7201/api/v1/read", "http://m3"])
def test_a_good_url_is_accepted_as_typed_without_surrounding_space(url: str) -> None:
    assert check_http_url(f"  {url}\n", "source read_url") == url


@pytest.mark.parametrize(
    ("model", "field", "name"),
    [
        (SourceSettings, "read_url", "source read_url"),
        (SourceSettings, "query_url", "source URL"),
        (SourceSettings, "admin_url", "source URL"),
        (TargetSettings, "write_url", "target write_url"),
        (TargetSettings, "query_url", "target query_url"),
    ],
)
def test_every_url_field_is_checked(model: type, field: str, name: str) -> None:
    data = {"read_url": READ} if model is SourceSettings else {"write_url": WRITE}
    with pytest.raises(ValidationError) as caught:
        model.model_validate({**data, field: "ftp://x/y"})
    (error,) = caught.value.errors()
    assert error["loc"] == (field,) and name in error["msg"]


def test_bases_accept_the_forms_the_docs_allow() -> None:
    """query_url is 'the part before /api/v1/...'; the origin of read_url when not given (M3 serves both)."""
    for given in ("http://m3:7201", "http://m3:7201/", "http://m3:7201/api/v1", "http://m3:7201/api/v1/query"):
        assert api_base(given) == "http://m3:7201"
    assert SourceSettings(read_url=READ).promql_base == "http://m3:7201"
    assert SourceSettings(read_url=READ, query_url="http://q:9090/api/v1/").promql_base == "http://q:9090"
    assert SourceSettings(read_url=READ, query_url="http://q:9090").admin_base == "http://q:9090"
    assert SourceSettings(read_url=READ, admin_url="http://a:7201/").admin_base == "http://a:7201"
    assert TargetSettings(write_url=WRITE).promql_base is None


def test_m3_headers_never_truncate_and_pin_only_what_is_set() -> None:
    """M3-Limit-Require-Exhaustive: a query over M3's limit fails instead of answering part of the data."""
    assert SourceSettings(read_url=READ).m3_headers() == {"M3-Limit-Require-Exhaustive": "true"}
    pinned = SourceSettings(read_url=READ, metrics_type="aggregated", storage_policy="1m:40d", limit_max_series=5)
    assert pinned.m3_headers() == {
        "M3-Limit-Require-Exhaustive": "true",
        "M3-Metrics-Type": "aggregated",
        "M3-Storage-Policy": "1m:40d",
        "M3-Limit-Max-Series": "5",
    }
    with pytest.raises(ValidationError, match="storage_policy needs metrics_type='aggregated'"):
        SourceSettings(read_url=READ, storage_policy="1m:40d")


# -- auth and TLS ----------------------------------------------------------------------------------------


def test_auth_is_basic_or_bearer_never_both() -> None:
    with pytest.raises(ValidationError, match="not both"):
        AuthSettings(username="u", bearer_token=TOKEN)
    with pytest.raises(ValidationError, match="not both"):
        AuthSettings(password=SECRET, bearer_token=TOKEN)
    with pytest.raises(ValidationError, match="a password needs a username"):
        AuthSettings(password=SECRET)
    assert AuthSettings(username="u").password is None, "a user without a password is valid basic auth"


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        TlsSettings(cert_file="client.pem")
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        TlsSettings(key_file="client-key.pem")
    assert not TlsSettings().insecure_skip_verify, "verification stays on unless disabled"


def test_secrets_never_show_in_reprs_strings_or_dumps() -> None:
    source = SourceSettings(read_url=READ, auth=AuthSettings(username="u", password=SECRET))
    target = TargetSettings(write_url=WRITE, auth=AuthSettings(bearer_token=TOKEN))
    for text in (repr(source), str(source), source.model_dump_json(), repr(target), str(target.model_dump())):
        assert SECRET not in text and TOKEN not in text
    assert source.auth.password is not None and source.auth.password.get_secret_value() == SECRET


def test_a_refused_auth_setting_is_reported_without_the_secret() -> None:
    """pydantic's own message shows the input; the one the CLI prints (format_validation_error) must not."""
    with pytest.raises(ValidationError) as caught:
        SourceSettings(read_url=READ, auth={"password": SECRET, "bearer_token": TOKEN})
    text = format_validation_error(caught.value, "source settings")
    assert "auth: Value error, set either basic auth" in text
    assert SECRET not in text and TOKEN not in text


# -- what a migration's state keeps ------------------------------------------------------------------------


def _source() -> SourceSettings:
    return SourceSettings(
        read_url=READ,
        auth=AuthSettings(username="migrator", password=SECRET),
        headers={"X-Scope-OrgID": "team-a", "X-Api-Key": SECRET},
        metrics_type="unaggregated",
        max_concurrency=3,
    )


def test_saved_settings_keep_everything_but_secrets_and_header_values() -> None:
    saved = saved_settings(_source())
    text = json.dumps(saved)
    assert SECRET not in text and "team-a" not in text, "a header value may carry a credential"
    assert saved["auth"] == {"username": "migrator"} and saved["header_names"] == ["X-Api-Key", "X-Scope-OrgID"]
    assert (saved["metrics_type"], saved["max_concurrency"], saved["read_url"]) == ("unaggregated", 3, READ)
    token = saved_settings(TargetSettings(write_url=WRITE, tenant="t", auth=AuthSettings(bearer_token=TOKEN)))
    assert TOKEN not in json.dumps(token) and token["tenant"] == "t" and token["header_names"] == []


def test_saved_settings_come_back_whole_when_the_secrets_are_given_again() -> None:
    original = _source()
    given = {"auth": {"password": SECRET}, "headers": {"X-Scope-OrgID": "team-a", "X-Api-Key": SECRET}}
    restored = SourceSettings.model_validate(settings_from_saved(saved_settings(original), given, "source"))
    assert restored == original
    assert restored.auth.username == "migrator", "a nested setting given in part keeps the saved rest"


def test_given_settings_override_the_saved_ones() -> None:
    saved = saved_settings(TargetSettings(write_url=WRITE, tenant="old"))
    merged = settings_from_saved(saved, {"tenant": "new", "auth": {"bearer_token": TOKEN}}, "target")
    target = TargetSettings.model_validate(merged)
    assert target.tenant == "new" and target.auth.bearer_token is not None and target.write_url == WRITE


def test_a_header_not_given_again_is_named_without_its_value() -> None:
    saved = saved_settings(_source())
    with pytest.raises(ConfigError) as caught:
        settings_from_saved(saved, {"headers": {"X-Scope-OrgID": "team-a"}}, "source")
    text = str(caught.value)
    assert "used with the headers X-Api-Key," in text and "X-Scope-OrgID" not in text
    assert "--source-header NAME=VALUE" in text and SECRET not in text
    with pytest.raises(ConfigError, match="headers X-Api-Key, X-Scope-OrgID"):
        settings_from_saved(saved, {}, "source")
