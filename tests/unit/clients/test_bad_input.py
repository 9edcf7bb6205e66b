"""Bad input gaps: a target that answers HTML, and fuzzed HTTP answers to remote read.

No real server here answers a POST with a 200 HTML page (a login page of an authenticating proxy
does), and arbitrary bytes/statuses cannot be made to come out of Prometheus, so these tests use a
FAKE transport (httpx.MockTransport); real-server bad input is covered in test_remote_read.py,
test_remote_write.py, test_validate.py and test_cli.py.
"""

from __future__ import annotations

import contextlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3migrate.clients.http import RetryPolicy
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import M3MigrateError, MalformedResponse
from m3migrate.prompb import ReadResponse
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.wire.codec import Matcher, compress, encode_labels, frame_series, single_request

ONE = RetryPolicy(attempts=1, timeout_seconds=5)


def fake_client(status: int, headers: dict[str, str], body: bytes) -> httpx.Client:
    """A FAKE server: every request gets this answer."""
    return httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(status, headers=headers, content=body))
    )


def test_target_answering_an_html_page_is_one_clear_error():
    page = b"<!doctype html><html><body><form action=/login>Sign in</form></body></html>"
    client = fake_client(200, {"Content-Type": "text/html; charset=utf-8"}, page)
    settings = TargetSettings(write_url="http://receiver.invalid/api/v1/receive")
    with (
        RemoteWriteClient(settings, retry=ONE, client=client) as writer,
        pytest.raises(MalformedResponse, match="HTML page") as refused,
    ):
        writer.write(single_request(frame_series(encode_labels([("__name__", "x")]), b""), 0))
    assert "check write_url" in str(refused.value)
    assert writer.stats.requests == 0, "an HTML answer is not an acknowledgement"


def test_source_answering_an_html_page_is_one_clear_error():
    client = fake_client(200, {"Content-Type": "text/html"}, b"<html>Prometheus Time Series Collection</html>")
    settings = SourceSettings(read_url="http://m3.invalid/api/v1/prom/remote/read")
    with (
        RemoteReadClient(settings, retry=ONE, client=client) as reader,
        pytest.raises(MalformedResponse, match="expected snappy protobuf"),
    ):
        reader.read([Matcher("__name__", "=", "up")], 0, 1000)


def _claims_more_than_it_has() -> bytes:
    body = compress(ReadResponse().SerializeToString() + b"\x0a\x05" * 50)
    return b"\xff\xff\x03" + body[1:]  # a larger uvarint length than the block holds


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([200, 204, 206, 400, 404, 409, 413, 422, 429, 500, 501, 502, 503]),
    content_type=st.sampled_from(["application/x-protobuf", "text/html", "", "application/octet-stream", "text/plain"]),
    body=st.one_of(
        st.binary(max_size=512),
        st.binary(max_size=512).map(compress),
        st.just(_claims_more_than_it_has()),
        st.just(compress(b"\x0a\xff\xff\xff\xff\x0f")),  # a QueryResult claiming 4 GiB
    ),
)
def test_fuzz_remote_read_answers_raise_only_typed_errors(status, content_type, body):
    headers = {"Content-Type": content_type} if content_type else {}
    client = fake_client(status, headers, body)
    settings_ = SourceSettings(read_url="http://m3.invalid/api/v1/read")
    # Any exception other than the typed errors fails the test.
    with RemoteReadClient(settings_, retry=ONE, client=client) as r, contextlib.suppress(M3MigrateError):
        r.read([Matcher("__name__", "=", "up")], 0, 1000)
