"""Helpers for CRI tests through the real daemon: a pod-ready daemon, images in a registry, config builders.

A :class:`CriRig` owns, under a short base ``/tmp/wharfd-test-<tag>`` (shim
sockets must fit in 106 bytes):

- a docker-registry on 127.0.0.1 serving ``<REGISTRY>/e2e/pause:3`` (a static
  C pause, :mod:`tests.support.pause`) and ``<REGISTRY>/e2e/busybox:1``
  (Debian's static busybox), reached through a ``hosts.toml`` under the
  daemon's ``registry.config_path``;
- a CNI conf dir holding one bridge network (bridge ``wtb<tag>``, a random
  private /24, host-local IPAM with its data under the base, portmap) used with
  the plugins in /usr/lib/cni;
- a daemon whose netns go under its state dir and whose runc state goes under
  the base; every pod the builders make gets cgroup parent ``/wharfd-test-<tag>``.

:meth:`CriRig.cleanup` removes it all, even after failures: shims, runc
containers, mounts and netns under the base, the bridge, cgroups, the base.
Typical use::

    with CriRig() as rig:
        pod_id = rig.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=rig.pod_config("web"))).pod_sandbox_id
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from e2e.daemon import Daemon
from e2e.task_support import kill_shims, remove_cgroups, unmount_under
from tests.support.images import Image, build_image, build_layer, busybox_files, push_image
from tests.support.pause import pause_image
from tests.support.registry import RegistryServer, run_registry
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc
from wharfd.cri import fifo_keeper
from wharfd.runtime.images import platforms
from wharfd.runtime.registry import Resolver, Transport
from wharfd.runtime.shim.launch import SOCKET_DIR_ENV

REGISTRY = "pods.wharf.test"  # a made-up domain; hosts.toml sends it to the local registry
PAUSE_REF = f"{REGISTRY}/e2e/pause:3"
BUSYBOX_REF = f"{REGISTRY}/e2e/busybox:1"
CNI_BIN = "/usr/lib/cni"
RUNC = shutil.which("runc")
TIMEOUT = 60.0
APPLETS = (
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "true",
    "false",
    "env",
    "id",
    "ps",
    "httpd",
    "wget",
    "ip",
    "hostname",
)


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no route on this host covers."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=False).stdout
    used = []
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet on this host")


class CriRig:
    """A registry, a CNI network and a daemon for CRI tests; always cleaned up."""

    def __init__(
        self,
        *,
        registry: bool = True,
        extra_config: str = "",
        cni_plugins: Sequence[dict[str, Any]] = (),
        cni_executables: Mapping[str, str] | None = None,
        cni_config: str = "",
    ) -> None:
        # Images first: nothing to clean up yet if building them fails.
        self.pause = pause_image()
        self.busybox = build_image(
            [build_layer(busybox_files(APPLETS))], platform=platforms.host(), cmd=["sh"]
        )
        self.tag = uuid.uuid4().hex[:8]
        self.name = f"wharfd-test-{self.tag}"
        self.base = Path("/tmp") / self.name
        self.base.mkdir(mode=0o700)
        self.bridge = f"wtb{self.tag}"  # 11 characters (interface names stop at 15)
        self.subnet = _free_subnet()
        self.cgroup_parent = f"/{self.name}"
        self.use_registry = registry
        self.extra_config = extra_config
        # Plugins appended to the network's chain, and executables (name -> script) beside the
        # stock plugins in a bin dir of the rig's own.
        self.cni_plugins = list(cni_plugins)
        self.cni_executables = dict(cni_executables or {})
        self.cni_config = cni_config  # more lines of the CRI plugin's [cni] section
        self.registry: RegistryServer | None = None
        self._registry_cm: Any = None
        self.daemon = Daemon(self.base / "d")
        self._channel: grpc.Channel | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def cni_conf_dir(self) -> Path:
        return self.base / "net.d"

    @property
    def cni_bin_dir(self) -> Path:
        return self.base / "cni-bin" if self.cni_executables else Path(CNI_BIN)

    @property
    def certs_dir(self) -> Path:
        return self.base / "certs.d"

    @property
    def runc_root(self) -> Path:
        return self.base / "runc"

    @property
    def netns_dir(self) -> Path:
        return self.daemon.state / "io.containerd.grpc.v1.cri" / "netns"

    def config_toml(self) -> str:
        """The CRI section pointing at this rig's CNI, registry, pause image and runc root.

        Handlers: ``runc`` (the default) and ``wharf`` run our shim; ``runc-stock`` the stock one.
        """
        section = '[plugins."io.containerd.grpc.v1.cri"]'
        return (
            f"{section}\n"
            f'  sandbox_image = "{PAUSE_REF}"\n'
            "  netns_mounts_under_state_dir = true\n"
            "  restrict_oom_score_adj = true\n"
            f"{section[:-1]}.cni]\n"
            f'  bin_dir = "{self.cni_bin_dir}"\n'
            f'  conf_dir = "{self.cni_conf_dir}"\n'
            f"{self.cni_config}"
            f"{section[:-1]}.registry]\n"
            f'  config_path = "{self.certs_dir}"\n'
            f"{section[:-1]}.containerd.runtimes.runc.options]\n"
            f'  Root = "{self.runc_root}"\n'
            f"{section[:-1]}.containerd.runtimes.wharf.options]\n"
            f'  Root = "{self.runc_root}"\n'
            # The stock shim (Debian's containerd), as a node's containerd config names it.
            f"{section[:-1]}.containerd.runtimes.runc-stock]\n"
            '  runtime_type = "io.containerd.runc.v2"\n'
            f"{section[:-1]}.containerd.runtimes.runc-stock.options]\n"
            f'  Root = "{self.runc_root}"\n' + self.extra_config
        )

    def start(self) -> CriRig:
        self.write_cni_conf()
        if self.use_registry:
            self.start_registry()
        self.daemon.extra_config = self.config_toml()
        self.daemon.start()
        self._channel = grpc.insecure_channel(f"unix://{self.daemon.address}")
        return self

    def start_registry(self) -> None:
        self._registry_cm = run_registry(self.base / "registry")
        self.registry = self._registry_cm.__enter__()
        self.push(self.pause, "e2e/pause:3")
        self.push(self.busybox, "e2e/busybox:1")
        (self.certs_dir / REGISTRY).mkdir(parents=True, exist_ok=True)
        (self.certs_dir / REGISTRY / "hosts.toml").write_text(f'server = "{self.registry.url}"\n')

    def push(self, image: Image, path: str) -> None:
        """Push ``image`` to the rig's registry as ``<registry>/<path>`` (``repo:tag``)."""
        assert self.registry is not None
        ref = self.registry.ref(path)

        async def main() -> None:
            async with Transport() as transport:
                await push_image(Resolver(transport).pusher(ref), image, tag=path.rsplit(":", 1)[1])

        asyncio.run(main())

    def write_cni_conf(self) -> None:
        """One conflist: bridge (no masquerade) + host-local on the rig's subnet + portmap (+ the extras)."""
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        if self.cni_executables:
            self.cni_bin_dir.mkdir()
            for plugin in Path(CNI_BIN).iterdir():
                (self.cni_bin_dir / plugin.name).symlink_to(plugin)
            for name, script in self.cni_executables.items():
                (self.cni_bin_dir / name).write_text(script)
                (self.cni_bin_dir / name).chmod(0o755)
        hosts = list(self.subnet.hosts())
        conf = {
            "cniVersion": "1.0.0",
            "name": f"wharfd-test-{self.tag}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.base / "ipam"),
                        "ranges": [[{"subnet": str(self.subnet), "gateway": str(hosts[0])}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                *self.cni_plugins,
            ],
        }
        (self.cni_conf_dir / "10-wharfd-test.conflist").write_text(json.dumps(conf, indent=1))

    def crash(self) -> None:
        """SIGKILL the daemon (shims and pods keep running)."""
        self.close_channel()
        self.daemon.kill()

    def restart(self) -> None:
        """Start the daemon again on the same root and state."""
        self.daemon.start()
        self._channel = grpc.insecure_channel(f"unix://{self.daemon.address}")

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> CriRig:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- clients --------------------------------------------------------------------------------

    @property
    def runtime(self) -> cri_grpc.RuntimeServiceStub:
        assert self._channel is not None
        return cri_grpc.RuntimeServiceStub(self._channel)

    @property
    def images(self) -> cri_grpc.ImageServiceStub:
        assert self._channel is not None
        return cri_grpc.ImageServiceStub(self._channel)

    def wharf(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``wharf -n k8s.io …`` against the rig's daemon."""
        return self.daemon.wharf(*args, namespace="k8s.io", check=check)

    # -- builders -------------------------------------------------------------------------------

    def pod_config(
        self,
        name: str,
        *,
        uid: str | None = None,
        namespace: str = "default",
        attempt: int = 0,
        host_network: bool = False,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        port_mappings: Sequence[cri.PortMapping] = (),
        hostname: str = "",
        dns: cri.DNSConfig | None = None,
    ) -> cri.PodSandboxConfig:
        """A pod config under the rig's cgroup parent, with a log directory under the base."""
        uid = uid or uuid.uuid4().hex
        log_dir = self.base / "pods" / f"{namespace}_{name}_{uid}"
        log_dir.mkdir(parents=True, exist_ok=True)
        ns_opts = cri.NamespaceOption(network=cri.NODE if host_network else cri.POD)
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=attempt),
            hostname="" if host_network else (hostname or name),
            log_directory=str(log_dir),
            labels={
                "io.kubernetes.pod.name": name,
                "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid,
                **(labels or {}),
            },
            annotations=annotations or {},
            port_mappings=list(port_mappings),
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=self.cgroup_parent,
                security_context=cri.LinuxSandboxSecurityContext(namespace_options=ns_opts),
            ),
        )
        if dns is not None:
            config.dns_config.CopyFrom(dns)
        return config

    @staticmethod
    def container_config(
        name: str,
        command: Sequence[str] = (),
        args: Sequence[str] = (),
        *,
        image: str = BUSYBOX_REF,
        attempt: int = 0,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        envs: dict[str, str] | None = None,
        log_path: str = "",
        tty: bool = False,
        stdin: bool = False,
    ) -> cri.ContainerConfig:
        """A container config of the busybox image (pull it first with :meth:`pull`)."""
        return cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=attempt),
            image=cri.ImageSpec(image=image),
            command=list(command),
            args=list(args),
            labels=labels or {},
            annotations=annotations or {},
            envs=[cri.KeyValue(key=k, value=v.encode()) for k, v in (envs or {}).items()],
            log_path=log_path or f"{name}_{attempt}.log",
            tty=tty,
            stdin=stdin,
        )

    def pull(self, ref: str = BUSYBOX_REF) -> str:
        """PullImage; the image id."""
        reply = self.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=TIMEOUT)
        return str(reply.image_ref)

    def run_pod(self, name: str, **kw: Any) -> str:
        """RunPodSandbox with :meth:`pod_config`; the pod id."""
        request = cri.RunPodSandboxRequest(config=self.pod_config(name, **kw))
        return str(self.runtime.RunPodSandbox(request, timeout=TIMEOUT).pod_sandbox_id)

    def pod_status(self, pod_id: str, verbose: bool = False) -> cri.PodSandboxStatusResponse:
        request = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        reply: cri.PodSandboxStatusResponse = self.runtime.PodSandboxStatus(request, timeout=TIMEOUT)
        return reply

    # -- inspection -----------------------------------------------------------------------------

    def netns_files(self) -> list[str]:
        """The pinned netns the daemon has under its state dir."""
        return sorted(p.name for p in self.netns_dir.iterdir()) if self.netns_dir.is_dir() else []

    def k8s_containers(self) -> list[str]:
        """ids of the containerd container records in k8s.io (``wharf containers ls -q``)."""
        return self.wharf("containers", "ls", "-q").stdout.split()

    def k8s_snapshots(self) -> list[str]:
        """keys of the overlayfs snapshots in k8s.io."""
        lines = self.wharf("snapshots", "ls").stdout.splitlines()[1:]
        return [line.split()[0] for line in lines if line.split()]

    # -- clean-up -------------------------------------------------------------------------------

    def stop_all_pods(self) -> None:
        """StopPodSandbox every pod (best effort): CNI DEL releases addresses and port mappings."""
        if self._channel is None or self.daemon.proc is None or self.daemon.proc.poll() is not None:
            return
        with contextlib.suppress(grpc.RpcError):
            for pod in self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=TIMEOUT).items:
                with contextlib.suppress(grpc.RpcError):
                    self.runtime.StopPodSandbox(
                        cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=TIMEOUT
                    )

    def cleanup(self) -> None:
        """Remove everything the rig and the daemon made, whatever state the test left.

        Every step runs even if an earlier one fails; the base directory goes last.
        """
        steps = (
            self.stop_all_pods,
            self.close_channel,
            self._stop_daemon,
            lambda: kill_shims(str(self.daemon.address), self.daemon.state / "s"),
            lambda: fifo_keeper.stop_under(self.base),  # the processes keeping container output FIFOs open
            self._delete_runc_containers,
            lambda: unmount_under(self.base),
            lambda: remove_cgroups(self.cgroup_parent),
            lambda: subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True),
            self._stop_registry,
        )
        try:
            for step in steps:
                with contextlib.suppress(Exception):
                    step()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _stop_daemon(self) -> None:
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.daemon.stop(timeout=20)

    def _delete_runc_containers(self) -> None:
        ns_root = self.runc_root / "k8s.io"
        if ns_root.is_dir() and RUNC:
            for entry in ns_root.iterdir():
                subprocess.run([RUNC, "--root", str(ns_root), "delete", "--force", entry.name],
                               check=False, capture_output=True)  # fmt: skip

    def _stop_registry(self) -> None:
        if self._registry_cm is not None:
            cm, self._registry_cm = self._registry_cm, None
            cm.__exit__(None, None, None)


@contextlib.contextmanager
def rig(**kw: Any) -> Iterator[CriRig]:
    """A started :class:`CriRig`, cleaned up at the end."""
    with CriRig(**kw) as r:
        yield r


def image_archive(image: Image, name: str) -> bytes:
    """An OCI layout tar of ``image`` named ``name`` (what ``wharf images export`` writes)."""
    import io
    import tarfile

    blobs = [(layer.descriptor.digest, layer.blob) for layer in image.layers]
    blobs += [(image.config_desc.digest, image.config), (image.manifest_desc.digest, image.manifest)]
    manifest = image.manifest_desc.to_json()
    manifest["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [manifest]}).encode()  # fmt: skip
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
    files += [(f"blobs/sha256/{digest.split(':', 1)[1]}", data) for digest, data in blobs]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def addresses_in(netns_path: str, ifname: str = "eth0") -> list[str]:
    """The IPv4 addresses of ``ifname`` inside a pinned netns (pyroute2)."""
    from pyroute2 import NetNS

    with NetNS(netns_path) as ns:
        links = ns.link_lookup(ifname=ifname)
        if not links:
            return []
        return [a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=links[0], family=2)]


def needs_root_and_runc() -> list[Any]:
    """pytest marks for these tests: root, runc, CNI plugins, docker-registry."""
    import pytest

    return [
        pytest.mark.root,
        pytest.mark.skipif(os.geteuid() != 0, reason="pods need root"),
        pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
        pytest.mark.skipif(not Path(CNI_BIN, "bridge").exists(), reason=f"no CNI plugins in {CNI_BIN}"),
    ]


CONTAINERD = Path("/usr/bin/containerd")


class StockContainerd:
    """Debian's containerd (1.6) with its CRI plugin, on a root, state and socket of its own under a rig.

    It uses the rig's CNI network, registry (through a hosts.toml), pause image
    and runc. Its runtime ``runc`` is the stock runc shim; ``runtimes`` adds
    handlers (name → runtime_type), e.g. ``{"wharf": "io.containerd.wharf.v2"}``
    for our shim, found on the PATH it is started with (the venv's bin first).
    Everything it leaves under the rig goes with the rig's clean-up; its shims
    are killed on exit.
    """

    def __init__(self, rig: CriRig, runtimes: Mapping[str, str] | None = None) -> None:
        """Configure it under ``<rig base>/containerd``; nothing runs until ``with``."""
        self.rig = rig
        self.base = rig.base / "containerd"
        self.address = self.base / "containerd.sock"
        self.shim_sockets = self.base / "s"
        self.runtimes = {"runc": "io.containerd.runc.v2", **(runtimes or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def runtime(self) -> Any:
        """Its CRI RuntimeService stub."""
        assert self.channel is not None
        return cri_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> Any:
        """Its CRI ImageService stub."""
        assert self.channel is not None
        return cri_grpc.ImageServiceStub(self.channel)

    def _config(self) -> str:
        # Debian's containerd 1.6 refuses a hosts.toml without a host table ("invalid `host` tree").
        assert self.rig.registry is not None
        hosts = self.base / "certs.d" / REGISTRY
        hosts.mkdir(parents=True)
        url = self.rig.registry.url
        (hosts / "hosts.toml").write_text(
            f'server = "{url}"\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        section = '[plugins."io.containerd.grpc.v1.cri"]'
        text = (
            "version = 2\n"
            f'root = "{self.base / "root"}"\n'
            f'state = "{self.base / "state"}"\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.base / "opt"}"\n'
            f"{section}\n"
            f'  sandbox_image = "{PAUSE_REF}"\n'
            "  netns_mounts_under_state_dir = true\n"
            "  restrict_oom_score_adj = true\n"
            f"{section[:-1]}.cni]\n"
            f'  bin_dir = "{CNI_BIN}"\n'
            f'  conf_dir = "{self.rig.cni_conf_dir}"\n'
            f"{section[:-1]}.registry]\n"
            f'  config_path = "{self.base / "certs.d"}"\n'
        )
        for name, runtime_type in self.runtimes.items():
            text += (
                f"{section[:-1]}.containerd.runtimes.{name}]\n"
                f'  runtime_type = "{runtime_type}"\n'
                f"{section[:-1]}.containerd.runtimes.{name}.options]\n"
                f'  Root = "{self.base / "runc"}"\n'
            )
        return text

    def __enter__(self) -> StockContainerd:
        self.base.mkdir()
        (self.base / "config.toml").write_text(self._config())
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            # containerd 1.6 names no socket dir: our shims' (and their zygote's) under the rig.
            SOCKET_DIR_ENV: str(self.shim_sockets),
        }
        with open(self.base / "containerd.log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(CONTAINERD), "--config", str(self.base / "config.toml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.channel = grpc.insecure_channel(f"unix://{self.address}")
        try:
            deadline = time.monotonic() + 30
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"containerd exited: {self.log()[-2000:]}")
                with contextlib.suppress(grpc.RpcError):
                    self.runtime.Version(cri.VersionRequest(), timeout=1)
                    return self
                if time.monotonic() > deadline:
                    raise RuntimeError("containerd did not answer in 30 s")
                time.sleep(0.1)
        except BaseException:
            self.__exit__()
            raise

    def log(self) -> str:
        """What containerd has logged."""
        return (self.base / "containerd.log").read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        runtime = self.runtime
        with contextlib.suppress(grpc.RpcError):
            for pod in runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=TIMEOUT).items:
                with contextlib.suppress(grpc.RpcError):
                    runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=TIMEOUT)
                    runtime.RemovePodSandbox(
                        cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=TIMEOUT
                    )
        assert self.channel is not None and self.proc is not None
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        kill_shims(str(self.address), self.shim_sockets)
