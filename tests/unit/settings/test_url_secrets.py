"""A mistyped endpoint URL never shows its password or token: not in errors, hints or the CLI's output.

The usual slips: the scheme forgotten (``urlsplit`` then reads ``admin`` of ``admin:pw@host`` as the
scheme and the password as the path), a raw ``/``, ``?``, ``#`` or ``@`` in the password, a port out
of range or not a number (whose parse error would echo it), a token in the query string.
"""

from __future__ import annotations

import pytest
from cli_helpers import OFFLINE_MIGRATE, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from m3migrate.errors import ConfigError
from m3migrate.settings.endpoints import SourceSettings, TargetSettings, check_http_url, redact_url
from m3migrate.settings.spec import format_validation_error

# Secrets start with upper-case letters that no host or path below contains, so a hit is a leak.
SECRET_CHARS = "abcdefXYZ0123456789/?#:%@!$&'()*+,;=~-_."
secrets = st.text(SECRET_CHARS, min_size=4, max_size=16).map(lambda s: "PW" + s)
tokens = st.text("abcdef0123456789", min_size=4, max_size=12).map(lambda s: "TK" + s)
schemes = st.sampled_from(["", "http://", "https://", "HTTP://", "http:/", "http:", "ftp://", "//", "http:\\\\"])
hosts = st.sampled_from(["m3", "m3coordinator.svc", "127.0.0.1", "[::1]", "[::1", "", "thanos-receive"])
ports = st.sampled_from(["", ":7201", ":99999", ":abc", ":-1", ":", ":0", ":65536"])
paths = st.sampled_from(["", "/", "/api/v1/prom/remote/read", "/api/v1/receive", "//x"])


@st.composite
def urls_with_secrets(draw: st.DrawFn) -> tuple[str, list[str]]:
    secret, token, user = draw(secrets), draw(tokens), draw(st.sampled_from(["admin", "avnadmin", ""]))
    userinfo = draw(st.sampled_from([f"{user}:{secret}@", f"{secret}@", f":{secret}@", ""]))
    query = draw(st.sampled_from(["", f"?token={token}", f"#{token}", f"?a=1&access_token={token}"]))
    url = draw(schemes) + userinfo + draw(hosts) + draw(ports) + draw(paths) + query
    return url, [s for s in (secret, token) if s in url]


def _assert_clean(text: str, hidden: list[str], where: str) -> None:
    for secret in hidden:
        assert secret not in text, f"{secret!r} appears in {where}: {text!r}"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(urls_with_secrets())
def test_no_secret_of_a_malformed_url_appears_in_any_message(case):
    url, hidden = case
    _assert_clean(redact_url(url), hidden, "redact_url")
    try:
        accepted = check_http_url(url, "source read_url")
    except ConfigError as exc:
        _assert_clean(str(exc), hidden, "the error")
    else:
        assert "@" not in accepted, "a URL with user info was accepted"
        _assert_clean(redact_url(accepted), hidden, "redact_url of an accepted URL")
    for model, field in [
        (SourceSettings, "read_url"),
        (SourceSettings, "query_url"),
        (TargetSettings, "write_url"),
        (TargetSettings, "query_url"),
    ]:
        data = {"read_url": "http://m3:7201/api/v1/prom/remote/read", "write_url": "http://thanos:19291/api/v1/receive"}
        try:
            model.model_validate({**data, field: url})
        except ValidationError as exc:
            _assert_clean(format_validation_error(exc, "settings"), hidden, f"the {field} error the CLI prints")


@pytest.mark.parametrize(
    "url",
    [
        "http://h:99999/",
        "http://h:abc/",
        "http://h:-1/",
        "http://[::1/api/v1/read",
        "admin:PWs3cret@m3:7201/api/v1/prom/remote/read",
        "http://admin:PWpa/ss@m3:7201/api/v1/read",
        "http://admin:PWpa?ss@m3:7201/api/v1/read",
        "http://m3:7201/api/v1/read?token=TKabc#TKdef",
    ],
)
def test_redact_url_never_raises_and_keeps_only_scheme_host_port_path(url):
    shown = redact_url(url)
    assert "PW" not in shown and "TK" not in shown and "admin" not in shown
    assert "m3:7201" in shown or "h:" in shown or "[::1" in shown


def test_a_url_without_its_scheme_is_a_clear_error_that_hides_the_password():
    with pytest.raises(ConfigError) as caught:
        check_http_url("admin:S3cret@m3:7201/api/v1/prom/remote/read", "source read_url")
    assert "URL must start with http:// or https://" in str(caught.value)
    assert "S3cret" not in str(caught.value) and "admin" not in str(caught.value)


def test_an_out_of_range_port_is_refused_by_name():
    with pytest.raises(ConfigError, match="invalid port"):
        check_http_url("http://m3:99999/api/v1/read", "source read_url")


@pytest.mark.parametrize(
    "flag,url,expected",
    [
        ("--source-read-url", "admin:S3cret-41d9@m3:7201/api/v1/prom/remote/read", "must start with http://"),
        ("--source-read-url", "http://admin:S3cret-41d9/x@m3:7201/api/v1/read", "must not carry credentials"),
        ("--target-write-url", "http://thanos:99999/api/v1/receive?token=S3cret-41d9", "invalid port"),
        ("--source-query-url", "avnadmin:S3cret-41d9@m3:7201", "must start with http://"),
    ],
)
def test_the_cli_refuses_a_malformed_url_with_exit_2_and_never_prints_its_secret(flag, url, expected):
    args = list(OFFLINE_MIGRATE)
    if flag in args:
        args[args.index(flag) + 1] = url
    else:
        args += [flag, url]
    result = run_cli(*args, "--skip-validation", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert expected in " ".join(output.split())
    assert "S3cret-41d9" not in output and "Traceback" not in output
