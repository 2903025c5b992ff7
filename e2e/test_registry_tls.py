"""TLS on the registry download path, through the daemon's socket, against real docker-registry servers.

Three registries on 127.0.0.1: HTTPS with a server certificate from a CA this
module makes (``openssl``), HTTPS that also requires a client certificate
from that CA, and plain HTTP. Made-up domains reach them through the
``hosts.toml`` files under the daemon's ``registry.config_path`` (or a
``--hosts-dir`` given to ``wharf images pull``). Each case pulls an image of
its own (busybox plus a file naming the case), so every successful pull
downloads its manifest, config and layer through the TLS settings under test
rather than finding them already stored.

What ``runtime/registry/hosts.py`` promises, and these tests hold it to:

* ``ca`` (relative to the hosts directory) is trusted beside the system CAs;
  without it the certificate is refused, naming the endpoint;
* ``skip_verify = true`` skips verification;
* ``client`` in each form containerd accepts (``[[cert, key]]``, a file with
  both, a list of such files) is presented to a registry that asks for one;
* an ``http://`` host with TLS settings and a port other than 80 is tried
  over HTTPS first and falls back to HTTP only when the port speaks plain HTTP
  (never on a certificate it does not trust); without TLS settings, or on
  port 80, it is plain HTTP only;
* the files are read again when replaced on disk (no restart needed);
* a loopback registry named by its address needs no configuration: HTTPS
  without verification, else plain HTTP.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from e2e.daemon import Daemon, running
from tests.support.images import File, Image, build_image, build_layer, busybox_files, push_image
from tests.support.registry import Certificates, RegistryServer, make_certificates, run_registry
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc
from wharfd.api.services.content.v1 import content_pb2 as cpb
from wharfd.api.services.content.v1 import content_pb2_grpc as cpb_grpc
from wharfd.api.services.images.v1 import images_pb2 as ipb
from wharfd.api.services.images.v1 import images_pb2_grpc as ipb_grpc
from wharfd.runtime.images import platforms
from wharfd.runtime.registry import HostsConfig, Resolver, Transport

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacks into overlayfs: needs root"),
]

K8S = (("containerd-namespace", "k8s.io"),)
TIMEOUT = 60
CLI_NAMESPACE = "wharfd-test-tls"

# The images each registry holds, one per case (pushed as e2e/<case>:1).
ON_TLS = ("ca", "rotate", "skip", "upgrade", "no-downgrade", "http-only", "local-tls", "cli")
ON_MTLS = ("mtls-pair", "mtls-file", "mtls-list", "mtls-denied")
ON_PLAIN = ("fallback", "local-plain")


@dataclass
class Env:
    """The daemon, the registries, the CAs and the images pushed."""

    daemon: Daemon
    tls: RegistryServer
    mtls: RegistryServer
    plain: RegistryServer
    pki: Certificates
    other: Certificates  # a CA that vouches for none of the registries
    images: dict[str, Image]
    base: Path

    def ref(self, domain: str, case: str) -> str:
        """The reference of ``case``'s image under ``domain``."""
        return f"{domain}/e2e/{case}:1"


def _image(case: str) -> Image:
    files = [*busybox_files(), File("etc/hostname", f"{case}\n".encode())]
    return build_image([build_layer(files)], cmd=["sh"], platform=platforms.host())


def _hosts(root: Path, domain: str, text: str, *copies: Path) -> Path:
    """Write ``<root>/<domain>/hosts.toml`` (``copies`` go beside it, for relative paths)."""
    directory = root / domain
    directory.mkdir(parents=True)
    for path in copies:
        shutil.copy(path, directory / path.name)
    (directory / "hosts.toml").write_text(text)
    return directory


def _push(
    server: RegistryServer, pki: Certificates, images: dict[str, Image], cases: tuple[str, ...]
) -> None:
    # Pushed through the client under test, told about the CA (and the client certificate) in hosts.toml.
    hosts = server.root / "push-hosts"
    ca = f'ca = "{pki.ca}"\n' if server.tls else ""
    client = f'client = [["{pki.client_cert}", "{pki.client_key}"]]\n' if server.client_certs else ""
    _hosts(hosts, server.host, f'server = "{server.url}"\n{ca}{client}')

    async def main() -> None:
        async with Transport(HostsConfig(config_path=str(hosts))) as transport:
            for case in cases:
                pusher = Resolver(transport).pusher(server.ref(f"e2e/{case}:1"))
                await push_image(pusher, images[case], tag="1")

    asyncio.run(main())


def _daemon_hosts(
    root: Path, pki: Certificates, other: Certificates, tls: RegistryServer, mtls: RegistryServer, plain: str
) -> None:
    https, mutual = f"https://{tls.host}", f"https://{mtls.host}"
    _hosts(root, "ca.wharf.test", f'server = "{https}"\nca = "ca.pem"\n', pki.ca)
    _hosts(root, "noca.wharf.test", f'server = "{https}"\n')
    _hosts(root, "skip.wharf.test", f'server = "{https}"\nskip_verify = true\n')
    _hosts(root, "wrongca.wharf.test", f'server = "{https}"\nca = "{other.ca}"\n')
    # The three forms of client certificates containerd accepts.
    _hosts(
        root, "mtls-pair.wharf.test",
        f'server = "{mutual}"\nca = "{pki.ca}"\nclient = [["client.pem", "client.key"]]\n',
        pki.client_cert, pki.client_key,
    )  # fmt: skip
    _hosts(
        root, "mtls-file.wharf.test", f'server = "{mutual}"\nca = "{pki.ca}"\nclient = "{pki.client_pem}"\n'
    )
    _hosts(
        root, "mtls-list.wharf.test", f'server = "{mutual}"\nca = "{pki.ca}"\nclient = ["{pki.client_pem}"]\n'
    )
    _hosts(root, "mtls-none.wharf.test", f'server = "{mutual}"\nca = "{pki.ca}"\n')
    _hosts(
        root, "mtls-foreign.wharf.test",
        f'server = "{mutual}"\nca = "{pki.ca}"\nclient = [["{other.client_cert}", "{other.client_key}"]]\n',
    )  # fmt: skip
    # http:// hosts: with TLS settings HTTPS is tried first; without, plain HTTP only.
    _hosts(root, "upgrade.wharf.test", f'server = "http://{tls.host}"\nca = "{pki.ca}"\n')
    _hosts(root, "fallback.wharf.test", f'server = "http://{plain}"\nskip_verify = true\n')
    _hosts(root, "no-downgrade.wharf.test", f'server = "http://{tls.host}"\nca = "{other.ca}"\n')
    _hosts(root, "http-only.wharf.test", f'server = "http://{tls.host}"\n')
    _hosts(root, "port80.wharf.test", 'server = "http://127.0.0.1"\nskip_verify = true\n')


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("registry-tls")
    pki = make_certificates(base / "pki")
    other = make_certificates(base / "other-pki", name="wharfd-test-other-ca")
    images = {case: _image(case) for case in (*ON_TLS, *ON_MTLS, *ON_PLAIN)}
    with (
        run_registry(base / "tls", tls=pki) as tls,
        run_registry(base / "mtls", tls=pki, client_certs=True) as mtls,
        run_registry(base / "plain") as plain,
    ):
        _push(tls, pki, images, ON_TLS)
        _push(mtls, pki, images, ON_MTLS)
        _push(plain, pki, images, ON_PLAIN)
        certs = base / "certs.d"
        _daemon_hosts(certs, pki, other, tls, mtls, plain.host)
        config = f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{certs}"\n'
        with running(base / "daemon", extra_config=config) as daemon:
            yield Env(daemon, tls, mtls, plain, pki, other, images, base)


@pytest.fixture
def channel(env: Env) -> Iterator[grpc.Channel]:
    with env.daemon.channel() as ch:
        yield ch


def pull(ch: grpc.Channel, ref: str) -> str:
    """CRI PullImage; the image id."""
    req = cri.PullImageRequest(image=cri.ImageSpec(image=ref))
    return str(cri_grpc.ImageServiceStub(ch).PullImage(req, timeout=TIMEOUT).image_ref)


def pull_error(ch: grpc.Channel, ref: str) -> grpc.RpcError:
    """The error of a CRI PullImage that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        pull(ch, ref)
    assert isinstance(info.value, grpc.RpcError)
    assert ref in (info.value.details() or ""), info.value.details()
    return info.value


def assert_stored(env: Env, ch: grpc.Channel, ref: str, case: str) -> None:
    """The CRI knows the image by ``ref``."""
    image = env.images[case]
    req = cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))
    status = cri_grpc.ImageServiceStub(ch).ImageStatus(req, timeout=TIMEOUT).image
    assert status.id == image.config_desc.digest and list(status.repo_tags) == [ref]


def assert_nothing_left(env: Env, ch: grpc.Channel, ref: str, case: str, namespace: str = "k8s.io") -> None:
    """A failed pull left no image record, no blob of the image and no ingest."""
    metadata = (("containerd-namespace", namespace),)
    images = ipb_grpc.ImagesStub(ch).List(ipb.ListImagesRequest(), metadata=metadata, timeout=TIMEOUT).images
    image = env.images[case]
    assert not {ref, image.config_desc.digest} & {i.name for i in images}
    content = cpb_grpc.ContentStub(ch)
    for desc in (image.manifest_desc, image.config_desc, *(layer.descriptor for layer in image.layers)):
        with pytest.raises(grpc.RpcError) as info:
            content.Info(cpb.InfoRequest(digest=desc.digest), metadata=metadata, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    statuses = content.ListStatuses(cpb.ListStatusesRequest(), metadata=metadata, timeout=TIMEOUT).statuses
    assert not statuses, [s.ref for s in statuses]


def assert_untrusted(error: grpc.RpcError, server: RegistryServer) -> None:
    """The error says the endpoint's certificate is not trusted, naming the endpoint."""
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.UNAVAILABLE, details
    assert f"TLS certificate of https://{server.host} not trusted" in details, details
    assert "CERTIFICATE_VERIFY_FAILED" in details, details


# --- server certificates ---------------------------------------------------------------------


def test_ca_from_hosts_toml(env: Env, channel: grpc.Channel) -> None:
    # The same registry without the CA: refused, and nothing of the image is kept.
    refused = env.ref("noca.wharf.test", "ca")
    assert_untrusted(pull_error(channel, refused), env.tls)
    assert_nothing_left(env, channel, refused, "ca")
    # A CA of someone else's does not help either.
    wrong = env.ref("wrongca.wharf.test", "ca")
    assert_untrusted(pull_error(channel, wrong), env.tls)
    assert_nothing_left(env, channel, wrong, "ca")

    ref = env.ref("ca.wharf.test", "ca")
    assert pull(channel, ref) == env.images["ca"].config_desc.digest
    assert_stored(env, channel, ref, "ca")


def test_ca_file_replaced_on_disk_is_read_again(env: Env, channel: grpc.Channel) -> None:
    # hosts.toml and its files are read for each pull (no restart needed), CA files included.
    directory = _hosts(
        env.base / "certs.d", "rotate.wharf.test", f'server = "https://{env.tls.host}"\nca = "ca.pem"\n'
    )
    shutil.copy(env.other.ca, directory / "ca.pem")
    ref = env.ref("rotate.wharf.test", "rotate")
    assert_untrusted(pull_error(channel, ref), env.tls)
    shutil.copy(env.pki.ca, directory / "ca.pem")
    assert pull(channel, ref) == env.images["rotate"].config_desc.digest
    assert_stored(env, channel, ref, "rotate")


def test_skip_verify(env: Env, channel: grpc.Channel) -> None:
    ref = env.ref("skip.wharf.test", "skip")
    assert pull(channel, ref) == env.images["skip"].config_desc.digest
    assert_stored(env, channel, ref, "skip")


# --- client certificates ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["mtls-pair", "mtls-file", "mtls-list"])
def test_client_certificate(env: Env, channel: grpc.Channel, form: str) -> None:
    ref = env.ref(f"{form}.wharf.test", form)
    assert pull(channel, ref) == env.images[form].config_desc.digest
    assert_stored(env, channel, ref, form)


@pytest.mark.parametrize("domain", ["mtls-none.wharf.test", "mtls-foreign.wharf.test"])
def test_client_certificate_missing_or_not_trusted(env: Env, channel: grpc.Channel, domain: str) -> None:
    ref = env.ref(domain, "mtls-denied")
    error = pull_error(channel, ref)
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.UNAVAILABLE, details
    assert f"https://{env.mtls.host}" in details, details
    # Go's server refuses with a bad_certificate alert after the TLS 1.3 handshake, by which time the
    # request is on its way; closing on that unread request sometimes resets the connection before
    # the alert is read, so a reset is the other answer the client can give.
    assert any(s in details for s in ("ALERT_BAD_CERTIFICATE", "Connection reset by peer")), details
    assert_nothing_left(env, channel, ref, "mtls-denied")


# --- http:// hosts and loopback registries ----------------------------------------------------


def test_http_host_with_tls_settings_uses_https(env: Env, channel: grpc.Channel) -> None:
    # The port speaks only TLS: this pull succeeds only if HTTPS (with the CA) was used.
    ref = env.ref("upgrade.wharf.test", "upgrade")
    assert pull(channel, ref) == env.images["upgrade"].config_desc.digest
    assert_stored(env, channel, ref, "upgrade")


def test_http_host_with_tls_settings_falls_back_to_http(env: Env, channel: grpc.Channel) -> None:
    ref = env.ref("fallback.wharf.test", "fallback")
    assert pull(channel, ref) == env.images["fallback"].config_desc.digest
    assert_stored(env, channel, ref, "fallback")


def test_untrusted_certificate_is_no_reason_to_fall_back(env: Env, channel: grpc.Channel) -> None:
    # HTTPS answered with a certificate the CA given does not vouch for: an error, not plain HTTP.
    ref = env.ref("no-downgrade.wharf.test", "no-downgrade")
    assert_untrusted(pull_error(channel, ref), env.tls)
    assert_nothing_left(env, channel, ref, "no-downgrade")


def test_http_host_without_tls_settings_is_plain_http_only(env: Env, channel: grpc.Channel) -> None:
    # Plain HTTP to a TLS port: Go's server answers a raw 400 with a body even to HEAD, which the
    # client reads as a broken response (or, had the body come apart, as the 400): no HTTPS attempt.
    ref = env.ref("http-only.wharf.test", "http-only")
    error = pull_error(channel, ref)
    details = error.details() or ""
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        assert f"HEAD http://{env.tls.host}" in details, details
        assert "Client sent an HTTP request to an HTTPS server" in details, details
    else:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "(HTTP 400)" in details, details
    assert_nothing_left(env, channel, ref, "http-only")


def test_http_host_on_port_80_is_not_upgraded(env: Env, channel: grpc.Channel) -> None:
    # As containerd: only an http:// host with an explicit port other than 80 is tried over HTTPS.
    # http://127.0.0.1 is port 80, where nothing listens: the error names the one URL tried.
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 80)) == 0:
            pytest.skip("something listens on 127.0.0.1:80")
    error = pull_error(channel, env.ref("port80.wharf.test", "http-only"))
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.UNAVAILABLE, details
    assert "HEAD http://127.0.0.1: " in details and "127.0.0.1:80" in details, details


@pytest.mark.parametrize(("case", "server"), [("local-plain", "plain"), ("local-tls", "tls")])
def test_loopback_registry_needs_no_configuration(
    env: Env, channel: grpc.Channel, case: str, server: str
) -> None:
    # 127.0.0.1:<port> has no hosts.toml: HTTPS without verification, else plain HTTP.
    registry: RegistryServer = getattr(env, server)
    ref = registry.ref(f"e2e/{case}:1")
    assert pull(channel, ref) == env.images[case].config_desc.digest
    assert_stored(env, channel, ref, case)


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_pull_with_hosts_dir(env: Env, channel: grpc.Channel) -> None:
    # cli.wharf.test is only in the directories given with --hosts-dir, not in the daemon's config_path.
    ref = env.ref("cli.wharf.test", "cli")
    trusting, distrusting = env.base / "cli-ca", env.base / "cli-noca"
    _hosts(trusting, "cli.wharf.test", f'server = "https://{env.tls.host}"\nca = "ca.pem"\n', env.pki.ca)
    _hosts(distrusting, "cli.wharf.test", f'server = "https://{env.tls.host}"\n')
    daemon = env.daemon

    failed = daemon.wharf(
        "images", "pull", "--hosts-dir", str(distrusting), ref, namespace=CLI_NAMESPACE, check=False
    )
    assert failed.returncode != 0
    assert f"TLS certificate of https://{env.tls.host} not trusted" in failed.stderr, failed.stderr
    assert_nothing_left(env, channel, ref, "cli", namespace=CLI_NAMESPACE)

    done = daemon.wharf("images", "pull", "--hosts-dir", str(trusting), ref, namespace=CLI_NAMESPACE)
    assert done.stdout.splitlines()[-1].startswith(f"Completed pull from OCI Registry ({ref})"), done.stdout
    listed = daemon.wharf("images", "ls", namespace=CLI_NAMESPACE).stdout.splitlines()[1:]
    assert [row.split()[:3:2] for row in listed] == [[ref, env.images["cli"].manifest_desc.digest]]
    check = daemon.wharf("images", "check", namespace=CLI_NAMESPACE).stdout.splitlines()[1]
    assert check.split()[-1] == "true"  # unpacked
