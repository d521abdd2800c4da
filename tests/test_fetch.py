"""URL fetching: the SSRF guard, redirects, limits and timeouts, on loopback only."""

from __future__ import annotations

import httpcore
import pytest
from http_fixtures import LoopbackHTTPServer, Route, encode

from iqa.inference.fetch import (
    DownloadTooLargeError,
    FetchConnectionError,
    FetchPolicy,
    FetchTimeoutError,
    ForbiddenAddressError,
    GuardedBackend,
    ImageFetcher,
    InvalidURLError,
    TooManyRedirectsError,
    UnsupportedContentTypeError,
    UpstreamStatusError,
    fetch_url,
    is_public_address,
    resolve_checked,
    validate_url,
)

LOOPBACK_ONLY = FetchPolicy(allowed_networks=("127.0.0.1/32",), read_timeout=0.5)


@pytest.fixture(scope="module")
def jpeg(photo) -> bytes:
    return encode(photo[:256, :256])


@pytest.fixture(scope="module")
def server(jpeg):
    routes = {
        "/photo.jpg": Route(body=jpeg),
        "/untyped": Route(body=jpeg, content_type=None),
        "/octet": Route(body=jpeg, content_type="application/octet-stream"),
        "/page.html": Route(body=b"<html></html>", content_type="text/html; charset=utf-8"),
        "/drawing.svg": Route(body=b"<svg/>", content_type="image/svg+xml"),
        "/big.jpg": Route(body=b"\xff" * 300_000),
        "/big-stream.jpg": Route(body=b"\xff" * 300_000, send_length=False),
        "/slow.jpg": Route(body=jpeg, delay=2.0),
        "/drip.jpg": Route(body=jpeg, drip=0.2),  # each read well inside read_timeout
        "/gone.jpg": Route(status=410, body=b"gone", content_type="text/plain"),
        "/to-photo": Route(status=302, headers={"Location": "/photo.jpg"}),
        "/to-private": Route(status=302, headers={"Location": "http://10.0.0.1/photo.jpg"}),
        "/to-metadata": Route(status=307,
                              headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
        "/to-internal-name": Route(status=301,
                                   headers={"Location": "http://internal.example.com/x.jpg"}),
        "/to-file": Route(status=302, headers={"Location": "file:///etc/passwd"}),
        "/loop": Route(status=302, headers={"Location": "/loop"}),
    }
    for hop in range(1, 5):  # /chain1 -> /chain2 -> ... -> /chain5 = photo
        routes[f"/chain{hop}"] = Route(status=302, headers={"Location": f"/chain{hop + 1}"})
    routes["/chain5"] = Route(body=jpeg)
    with LoopbackHTTPServer(routes) as srv:
        yield srv


class RecordingBackend(httpcore.NetworkBackend):
    """The real socket backend, recording every (host, port) it is asked to connect to."""

    def __init__(self):
        self.inner = httpcore.SyncBackend()
        self.calls: list[tuple[str, int]] = []

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.calls.append((host, port))
        return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    def connect_unix_socket(self, *args, **kwargs):  # pragma: no cover
        raise AssertionError("unix sockets must never be used")

    def sleep(self, seconds):  # pragma: no cover
        self.inner.sleep(seconds)


# --------------------------------------------------------------------- address rules
@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1", "172.16.5.4", "192.168.1.1", "127.0.0.1", "127.9.9.9", "169.254.169.254",
        "0.0.0.0", "100.64.0.1", "224.0.0.1", "239.255.255.250", "255.255.255.255",
        "192.0.2.1", "240.0.0.1", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12::1",
        "ff02::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
        "2002:a00:1::1", "64:ff9b::a00:1", "2001:db8::1", "fec0::1",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert not is_public_address(address)
    assert not FetchPolicy().permits(address)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "2001:4860:4860::8888",
                "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_are_allowed(address):
    assert is_public_address(address)


def test_policy_allowlist_and_allow_private():
    narrow = FetchPolicy(allowed_networks=("10.20.0.0/16",))
    assert narrow.permits("10.20.3.4")
    assert not narrow.permits("10.21.0.1")
    assert not narrow.permits("127.0.0.1")
    assert FetchPolicy(allow_private=True).permits("127.0.0.1")
    with pytest.raises(ValueError):
        FetchPolicy(allowed_networks=("not-a-network",))


def test_every_resolved_address_is_checked(guard):
    assert resolve_checked("images.example.com", 80, FetchPolicy()) == ["93.184.216.34"]
    # One public and one private address: the whole host is refused.
    with pytest.raises(ForbiddenAddressError) as info:
        resolve_checked("mixed.example.com", 80, FetchPolicy())
    assert "10.1.2.3" not in str(info.value)  # internal layout is not told to the caller
    with pytest.raises(ForbiddenAddressError):
        resolve_checked("localhost", 80, FetchPolicy())
    with pytest.raises(FetchConnectionError):
        resolve_checked("no-such-host.invalid", 80, FetchPolicy())
    assert guard.connects == []


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://images.example.com/a.jpg", "gopher://x/", "javascript:alert(1)",
     "/relative/path.jpg", "http:///no-host", "", "   ", "http://" + "a" * 5000 + ".com/",
     # A space or an empty label in the host used to reach DNS and fail as "cannot resolve".
     "http://exa mple.com/a.jpg", "http://exa%20mple.com/", "http://a..b/", "http://a%2fb.com/"],
)
def test_invalid_urls(url):
    with pytest.raises(InvalidURLError):
        validate_url(url, FetchPolicy())


def test_real_host_forms_stay_valid():
    for url, host in [("http://a_b.example.com/x.jpg", "a_b.example.com"),
                      ("http://[::1]:8000/a.jpg", "::1"), ("https://bücher.de/", "bücher.de"),
                      ("https://example.com./a.jpg", "example.com."),
                      ("http://127.0.0.1:9/a.jpg", "127.0.0.1")]:
        assert validate_url(url, FetchPolicy()).host == host


def test_invalid_url_messages_say_what_is_missing():
    with pytest.raises(InvalidURLError, match="'notaurl' is not an absolute URL: it needs http"):
        validate_url("notaurl", FetchPolicy())
    with pytest.raises(InvalidURLError, match="not scheme 'ftp'"):
        validate_url("ftp://images.example.com/a.jpg", FetchPolicy())


# -------------------------------------------------------------------------- fetching
def test_fetch_from_loopback_with_allowlist(guard, server, jpeg):
    backend = RecordingBackend()
    with ImageFetcher(LOOPBACK_ONLY, backend=backend) as fetcher:
        for path in ("/photo.jpg", "/untyped", "/octet"):
            fetched = fetcher.fetch(server.url(path))
            assert fetched.data == jpeg
    assert backend.calls and all(host == "127.0.0.1" for host, _ in backend.calls)


def test_guard_refuses_before_connecting(guard, server):
    backend = RecordingBackend()
    urls = [
        "http://10.0.0.1/photo.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/x.jpg",
        "http://internal.example.com/x.jpg",
        "http://metadata.example.com/",
        "http://mixed.example.com/x.jpg",
        server.url("/photo.jpg", host="localhost"),
        server.url("/photo.jpg", host="[::1]"),
        server.url("/photo.jpg", host="0.0.0.0"),
    ]
    hits_before = len(server.hits)
    with ImageFetcher(FetchPolicy(), backend=backend) as fetcher:
        for url in urls:
            with pytest.raises(ForbiddenAddressError):
                fetcher.fetch(url)
    assert backend.calls == []
    assert guard.connects == []
    assert server.hits[hits_before:] == []


def test_redirect_targets_are_checked(guard, server):
    """Hop 1 (127.0.0.1) is allowed by the allowlist; the private targets are not."""
    backend = RecordingBackend()
    with ImageFetcher(LOOPBACK_ONLY, backend=backend) as fetcher:
        for path in ("/to-private", "/to-metadata", "/to-internal-name"):
            with pytest.raises(ForbiddenAddressError):
                fetcher.fetch(server.url(path))
        with pytest.raises(InvalidURLError):
            fetcher.fetch(server.url("/to-file"))
        assert fetcher.fetch(server.url("/to-photo")).url.endswith("/photo.jpg")
    assert {host for host, _ in backend.calls} == {"127.0.0.1"}
    assert all(address[0] == "127.0.0.1" for address in guard.connects)


def test_redirect_limit(guard, server):
    with ImageFetcher(LOOPBACK_ONLY) as fetcher:
        with pytest.raises(TooManyRedirectsError):
            fetcher.fetch(server.url("/loop"))
        with pytest.raises(TooManyRedirectsError):
            fetcher.fetch(server.url("/chain1"))  # 4 redirects > 3
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), max_redirects=4)
    with ImageFetcher(policy) as fetcher:
        assert fetcher.fetch(server.url("/chain1")).url.endswith("/chain5")


def test_dns_answer_is_pinned(guard, server, monkeypatch, jpeg):
    """The address that was checked is the one connected to: no second lookup."""
    answers = iter([["127.0.0.1"]] + [["10.0.0.1"]] * 10)  # a rebinding DNS server

    class Rebinding(dict):
        def __getitem__(self, name):
            return next(answers) if name == "rebind.example.com" else super().__getitem__(name)

        def __contains__(self, name):
            return name == "rebind.example.com" or super().__contains__(name)

    guard.dns = Rebinding(guard.dns)
    with ImageFetcher(LOOPBACK_ONLY) as fetcher:
        assert fetcher.fetch(server.url("/photo.jpg", host="rebind.example.com")).data == jpeg
    assert guard.lookups == ["rebind.example.com"]
    assert [a[0] for a in guard.connects] == ["127.0.0.1"]


def test_size_limit(guard, server):
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), max_bytes=100_000)
    with ImageFetcher(policy) as fetcher:
        with pytest.raises(DownloadTooLargeError, match="300000 bytes"):
            fetcher.fetch(server.url("/big.jpg"))  # refused on Content-Length
        with pytest.raises(DownloadTooLargeError):
            fetcher.fetch(server.url("/big-stream.jpg"))  # refused while streaming
        assert len(fetcher.fetch(server.url("/photo.jpg")).data) < 100_000


def test_status_content_type_and_timeout(guard, server):
    with ImageFetcher(LOOPBACK_ONLY) as fetcher:
        with pytest.raises(UpstreamStatusError) as info:
            fetcher.fetch(server.url("/missing.jpg"))
        assert info.value.status == 404 and info.value.http_status == 502
        with pytest.raises(UpstreamStatusError):
            fetcher.fetch(server.url("/gone.jpg"))
        with pytest.raises(UnsupportedContentTypeError,
                           match=f"{server.url('/page.html')} serves 'text/html', not an image"):
            fetcher.fetch(server.url("/page.html"))
        with pytest.raises(UnsupportedContentTypeError):
            fetcher.fetch(server.url("/drawing.svg"))
        with pytest.raises(FetchTimeoutError):
            fetcher.fetch(server.url("/slow.jpg"))


def test_a_server_that_drips_its_body_hits_the_total_timeout(guard, server, jpeg):
    """Every read arrives inside read_timeout, so only the total deadline can stop it: it
    must be checked as bytes arrive, not once per 64 KiB (the whole body here)."""
    import time

    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), read_timeout=0.5,
                         total_timeout=1.0)
    assert len(jpeg) / 256 * 0.2 > 5  # the whole body would take over 5 s
    with ImageFetcher(policy) as fetcher:
        started = time.monotonic()
        with pytest.raises(FetchTimeoutError, match="took longer than 1 s"):
            fetcher.fetch(server.url("/drip.jpg"))
        assert time.monotonic() - started < 3.0
        with pytest.raises(FetchTimeoutError, match="stopped answering for more than 0.5 s"):
            fetcher.fetch(server.url("/slow.jpg"))


def test_connection_refused_is_a_fetch_error(guard):
    # A loopback port with nothing listening: bind, note the port, close.
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with ImageFetcher(LOOPBACK_ONLY) as fetcher:
        with pytest.raises(FetchConnectionError):
            fetcher.fetch(f"http://127.0.0.1:{port}/x.jpg")


def test_guarded_backend_refuses_unix_sockets():
    with pytest.raises(ForbiddenAddressError):
        GuardedBackend(FetchPolicy()).connect_unix_socket("/var/run/docker.sock")


def test_fetch_url_convenience(guard, server, jpeg):
    with pytest.raises(ForbiddenAddressError):
        fetch_url(server.url("/photo.jpg"))
    assert guard.connects == []
    assert fetch_url(server.url("/photo.jpg"), LOOPBACK_ONLY) == jpeg
    assert fetch_url(server.url("/to-photo"), LOOPBACK_ONLY) == jpeg


def test_https_verifies_the_url_hostname_while_connecting_to_the_pinned_ip(guard, tmp_path, jpeg):
    """TLS goes to the checked IP but SNI and certificate checks use the URL's hostname."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a throwaway certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=images.loop.test", "-addext", "subjectAltName=DNS:images.loop.test"],
        check=True, capture_output=True,
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    guard.dns["images.loop.test"] = ["127.0.0.1"]
    with LoopbackHTTPServer({"/photo.jpg": Route(body=jpeg)}, tls=server_tls) as server:
        with ImageFetcher(LOOPBACK_ONLY, verify=client_tls) as fetcher:
            assert fetcher.fetch(server.url("/photo.jpg", host="images.loop.test")).data == jpeg
            # Same server by IP: the certificate does not name 127.0.0.1, so TLS fails.
            with pytest.raises(FetchConnectionError, match="CERTIFICATE_VERIFY_FAILED|mismatch"):
                fetcher.fetch(server.url("/photo.jpg"))
    assert guard.lookups == ["images.loop.test"]
    assert {address[0] for address in guard.connects} == {"127.0.0.1"}
