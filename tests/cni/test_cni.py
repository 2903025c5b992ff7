"""CNI: config loading, and the real Debian plugins (bridge, host-local, loopback) on a test netns."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, NetNS

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cni import config, netns
from wharfd.cni import exec as cniexec
from wharfd.cni.exec import PluginError
from wharfd.cni.manager import CniManager, Settings
from wharfd.cri import network as crinet
from wharfd.runtime import errors

BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
HAVE_PLUGINS = Path("/usr/lib/cni/bridge").exists() and os.geteuid() == 0
needs_plugins = pytest.mark.skipif(
    not HAVE_PLUGINS, reason="needs root and Debian's containernetworking-plugins"
)


def conflist(bridge: str, subnet: str, data_dir: Path, version: str = "1.0.0") -> dict[str, object]:
    return {
        "cniVersion": version,
        "name": "wharfd-test-net",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


# --- config -------------------------------------------------------------------


def test_parse_conflist_and_single_conf() -> None:
    net = config.parse(json.dumps(conflist("br0", "10.1.0.0/24", Path("/x"))).encode(), "a.conflist")
    assert net.name == "wharfd-test-net" and [p["type"] for p in net.plugins] == ["bridge", "portmap"]
    single = config.parse(b'{"cniVersion": "0.3.1", "name": "lo", "type": "loopback"}', "99-lo.conf")
    assert single.plugins == ({"type": "loopback"},)
    stdin = json.loads(single.plugin_config(0, {"prevResult": {"ips": []}}))
    assert stdin == {"type": "loopback", "name": "lo", "cniVersion": "0.3.1", "prevResult": {"ips": []}}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"{nope", "not valid JSON"),
        (b'{"cniVersion": "1.0.0", "type": "bridge"}', "name must be"),
        (b'{"name": "n", "type": "bridge"}', "cniVersion must be"),
        (b'{"name": "n", "cniVersion": "9.9.9", "type": "x"}', "not supported"),
        (b'{"name": "n", "cniVersion": "1.0.0", "plugins": []}', "non-empty list"),
        (b'{"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "../evil"}]}', "plugins[0].type"),
    ],
)
def test_invalid_configs_name_file_and_field(doc: bytes, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        config.parse(doc, "/etc/cni/net.d/10-bad.conflist")
    assert "10-bad.conflist" in str(info.value) and message in str(info.value)


def test_load_dir_order_limit_and_failures(tmp_path: Path) -> None:
    (tmp_path / "30-c.conf").write_text('{"cniVersion": "1.0.0", "name": "c", "type": "loopback"}')
    (tmp_path / "10-a.conflist").write_text("{broken")
    (tmp_path / "20-b.conflist").write_text(
        '{"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "x"}]}'
    )
    (tmp_path / "README").write_text("ignored")
    loaded = config.load_dir(tmp_path, max_conf_num=1)
    assert [n.name for n in loaded.networks] == ["b"]
    assert len(loaded.failures) == 1 and "10-a.conflist" in loaded.failures[0]
    assert [n.name for n in config.load_dir(tmp_path, max_conf_num=0).networks] == ["b", "c"]
    assert config.load_dir(tmp_path / "missing").networks == []


# --- real plugins -----------------------------------------------------------------


@pytest.fixture
def net_env(tmp_path: Path) -> Iterator[tuple[Settings, str, Path]]:
    tag = secrets.token_hex(3)
    bridge = f"wt{tag}"  # interface names are at most 15 bytes
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    settings = Settings(conf_dir, BIN_DIRS, tmp_path / "cache", max_conf_num=1, timeout=30)
    ns_dir = Path(f"/tmp/wharfd-test-netns-{tag}")
    try:
        yield settings, bridge, ns_dir
    finally:
        with IPRoute() as ipr:
            for link in ipr.link_lookup(ifname=bridge):
                ipr.link("del", index=link)
        # pyroute2 bind-mounts a netns directory onto itself (as `ip netns` does): unmount it too.
        subprocess.run(["umount", "-l", str(ns_dir)], capture_output=True, check=False)
        shutil.rmtree(ns_dir, ignore_errors=True)


def _addresses(path: Path, ifname: str) -> list[str]:
    # pyroute2's synchronous API runs its own event loop: call it from a thread.
    with NetNS(str(path)) as ns:
        idx = ns.link_lookup(ifname=ifname)
        return [a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=idx[0])] if idx else []


@needs_plugins
def test_network_ready_flips_when_a_config_appears(
    net_env: tuple[Settings, str, Path], tmp_path: Path
) -> None:
    settings, bridge, _ = net_env

    async def main() -> None:
        manager = CniManager(settings)
        ready, reason, message = await manager.status()
        assert (ready, reason) == (False, "NetworkPluginNotReady") and "not initialized" in message
        (settings.conf_dir / "10-test.conflist").write_text(
            json.dumps(conflist(bridge, "10.249.7.0/24", tmp_path / "ipam"))
        )
        assert (await manager.status())[0] is True

    asyncio.run(main())


@needs_plugins
def test_add_check_del_with_real_plugins(net_env: tuple[Settings, str, Path], tmp_path: Path) -> None:
    settings, bridge, ns_dir = net_env
    (settings.conf_dir / "10-test.conflist").write_text(
        json.dumps(conflist(bridge, "10.249.8.0/24", tmp_path / "ipam"))
    )

    async def main() -> None:
        path = await netns.create("pod1", directory=ns_dir)
        try:
            manager = CniManager(settings)
            args = (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web"))
            attached = await manager.setup("sandbox-1", str(path), args, {"portMappings": []})
            assert attached[0].ifname == "eth0"
            ip = attached[0].result["ips"][0]["address"].split("/")[0]
            assert ip.startswith("10.249.8.") and ip in await asyncio.to_thread(_addresses, path, "eth0")
            await manager.check("sandbox-1", str(path), args)
            # A new manager (a restarted daemon) can still detach: the result was cached.
            await CniManager(settings).teardown("sandbox-1", str(path), args)
            assert await asyncio.to_thread(_addresses, path, "eth0") == []
            assert not list((settings.cache_dir / "results").iterdir())
            # DEL is idempotent.
            await CniManager(settings).teardown("sandbox-1", str(path), args)
        finally:
            await netns.remove(path)

    asyncio.run(main())


@needs_plugins
def test_plugin_errors_keep_the_plugins_words(net_env: tuple[Settings, str, Path], tmp_path: Path) -> None:
    settings, bridge, ns_dir = net_env
    doc = conflist(bridge, "not-a-subnet", tmp_path / "ipam")
    (settings.conf_dir / "10-test.conflist").write_text(json.dumps(doc))

    async def main() -> None:
        path = await netns.create("pod2", directory=ns_dir)
        try:
            with pytest.raises(PluginError) as info:
                await CniManager(settings).setup("sandbox-2", str(path))
            assert "CNI plugin bridge ADD failed" in str(info.value)
            assert "not-a-subnet" in str(info.value)
        finally:
            await netns.remove(path)

    asyncio.run(main())


def test_missing_plugin_binary(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10.conf").write_text('{"cniVersion": "1.0.0", "name": "n", "type": "no-such-plugin"}')

    async def main() -> None:
        manager = CniManager(Settings(conf, (str(tmp_path / "bin"),), tmp_path / "cache"))
        with pytest.raises(errors.NotFound, match="no-such-plugin"):
            await manager.setup("c1", "/proc/self/ns/net")

    asyncio.run(main())


def test_plugin_timeout(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    slow = bin_dir / "slow"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10.conf").write_text('{"cniVersion": "1.0.0", "name": "n", "type": "slow"}')

    async def main() -> None:
        manager = CniManager(Settings(conf, (str(bin_dir),), tmp_path / "cache", timeout=0.5))
        with pytest.raises(errors.DeadlineExceeded, match="slow ADD"):
            await manager.setup("c1", "/proc/self/ns/net")

    asyncio.run(main())


def test_capability_args_reach_only_declaring_plugins(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "stdin"
    for name in ("first", "second"):
        script = bin_dir / name
        script.write_text(
            f'#!/bin/sh\ncat > {record}.{name}\necho \'{{"cniVersion": "1.0.0", "ips": '
            '[{"address": "10.0.0.2/24"}]}\'\n'
        )
        script.chmod(0o755)
    conf = tmp_path / "net.d"
    conf.mkdir()
    doc = {
        "cniVersion": "1.0.0",
        "name": "n",
        "plugins": [{"type": "first"}, {"type": "second", "capabilities": {"portMappings": True}}],
    }
    (conf / "10.conflist").write_text(json.dumps(doc))
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]

    async def main() -> None:
        manager = CniManager(Settings(conf, (str(bin_dir),), tmp_path / "cache"))
        await manager.setup("c1", "/proc/self/ns/net", capability_args={"portMappings": ports, "dns": None})

    asyncio.run(main())
    first = json.loads(Path(f"{record}.first").read_text())
    second = json.loads(Path(f"{record}.second").read_text())
    assert "runtimeConfig" not in first and "prevResult" not in first
    assert second["runtimeConfig"] == {"portMappings": ports}
    assert second["prevResult"]["ips"][0]["address"] == "10.0.0.2/24"


def _slow_plugin(tmp_path: Path, then: str = "") -> tuple[Path, Path]:
    """A plugin "slow" that takes 0.5 s, then touches the returned marker file and runs ``then``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    done = tmp_path / "done"
    slow = bin_dir / "slow"
    slow.write_text(f"#!/bin/sh\nsleep 0.5\ntouch {done}\n{then}")
    slow.chmod(0o755)
    return bin_dir, done


def test_a_cancelled_plugin_runs_to_its_end_first(tmp_path: Path) -> None:
    """A caller going away mid-ADD: the plugin finishes (its DEL then sees all it did); a second cancel kills it."""
    bin_dir, done = _slow_plugin(tmp_path, 'echo \'{"cniVersion": "1.0.0"}\'\n')
    invocation = cniexec.Invocation("ADD", "c1", "/proc/self/ns/net", "eth0")

    async def main() -> None:
        call = asyncio.ensure_future(cniexec.invoke("slow", invocation, b"{}", [str(bin_dir)]))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert done.exists()  # it ran to its end before the cancellation went on
        done.unlink()
        call = asyncio.ensure_future(cniexec.invoke("slow", invocation, b"{}", [str(bin_dir)]))
        await asyncio.sleep(0.1)
        call.cancel()
        await asyncio.sleep(0.05)
        call.cancel()  # insisting: killed at once
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(1)
        assert not done.exists()

    asyncio.run(main())


def test_a_cancelled_check_stops_at_once(tmp_path: Path) -> None:
    """CHECK changes nothing: a caller going away kills it at once (a restart's checks do not hold shutdown)."""
    bin_dir, done = _slow_plugin(tmp_path)
    invocation = cniexec.Invocation("CHECK", "c1", "/proc/self/ns/net", "eth0")

    async def main() -> None:
        call = asyncio.ensure_future(cniexec.invoke("slow", invocation, b"{}", [str(bin_dir)]))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(1)
        assert not done.exists()

    asyncio.run(main())


def _stand_in_networks(
    tmp_path: Path, names: tuple[str, ...], wait: float, fail: str = ""
) -> tuple[Path, Path]:
    """A conf dir with one network per name (plugin of that name), and a bin dir of stand-ins.

    Each stand-in ADD notes its start, waits up to ``wait`` seconds for every other one to have
    started too, notes whether it saw them, and answers a result (``fail``: an error); DEL notes
    itself.
    """
    bin_dir, conf, notes = tmp_path / "bin", tmp_path / "net.d", tmp_path / "notes"
    bin_dir.mkdir()
    conf.mkdir()
    result = '{"cniVersion": "1.0.0", "interfaces": [], "ips": [{"address": "10.0.0.2/24"}]}'
    error = '{"cniVersion": "1.0.0", "code": 11, "msg": "wharfd-test-refused"}'
    rounds = int(wait * 10)
    for i, name in enumerate(names):
        others = " ".join(f"{tmp_path}/started-{n}" for n in names if n != name)
        (bin_dir / name).write_text(
            "#!/bin/sh\ncat >/dev/null\n"
            f'if [ "$CNI_COMMAND" = DEL ]; then echo {name}-del >> {notes}; exit 0; fi\n'
            f"echo {name}-start >> {notes}\ntouch {tmp_path}/started-{name}\n"
            f"all() {{ for f in {others}; do [ -e $f ] || return 1; done; }}\n"
            f"n=0\nwhile ! all && [ $n -lt {rounds} ]; do sleep 0.1; n=$((n+1)); done\n"
            f"if all; then echo {name}-saw-all >> {notes}; else echo {name}-alone >> {notes}; fi\n"
            + (f"echo {name}-failed >> {notes}\necho '{error}'\nexit 1\n" if name == fail else "")
            + f"echo '{result}'\n"
        )
        (bin_dir / name).chmod(0o755)
        if name != "loopback":
            doc = {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": name}]}
            (conf / f"{10 + i}-{name}.conflist").write_text(json.dumps(doc))
    return bin_dir, conf


@pytest.mark.parametrize("serially", [False, True])
def test_a_pods_networks_attach_side_by_side_unless_serially(tmp_path: Path, serially: bool) -> None:
    """go-cni's Setup attaches every network (loopback among them) at once; SetupSerially one by one, in order."""
    names = ("loopback", "net-a", "net-b")
    # Side by side each waits (up to 10 s) to see the others start; one by one none can, so a short wait.
    bin_dir, conf = _stand_in_networks(tmp_path, names, wait=0.3 if serially else 10)
    pod = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="p", uid="u", namespace="default"))

    async def main() -> list[tuple[str, str]]:
        manager = CniManager(Settings(conf, (str(bin_dir),), tmp_path / "cache", max_conf_num=2))
        attached = await crinet.setup(manager, "c1", "/proc/self/ns/net", pod, serially=serially)
        return [(a.network, a.ifname) for a in attached]

    assert asyncio.run(main()) == [("net-a", "eth0"), ("net-b", "eth1")]
    notes = (tmp_path / "notes").read_text().split()
    if serially:
        # Each starts once the one before has ended (so only the last sees the others started).
        assert notes == [
            "loopback-start", "loopback-alone", "net-a-start", "net-a-alone", "net-b-start", "net-b-saw-all"
        ]  # fmt: skip
    else:
        assert sorted(notes[3:]) == ["loopback-saw-all", "net-a-saw-all", "net-b-saw-all"]


def test_side_by_side_a_failed_network_lets_the_others_finish_then_detaches_them(tmp_path: Path) -> None:
    bin_dir, conf = _stand_in_networks(tmp_path, ("net-a", "net-b"), wait=10, fail="net-a")
    # net-a fails once it has seen net-b start; net-b's ADD still runs to its end, then is undone.

    async def main() -> None:
        manager = CniManager(Settings(conf, (str(bin_dir),), tmp_path / "cache", max_conf_num=2))
        with pytest.raises(PluginError, match="wharfd-test-refused"):
            await manager.setup("c1", "/proc/self/ns/net")

    asyncio.run(main())
    notes = (tmp_path / "notes").read_text().split()
    assert sorted(notes[2:5]) == ["net-a-failed", "net-a-saw-all", "net-b-saw-all"]
    assert notes[5:] == ["net-b-del"]  # only the network attached is detached, once every ADD ended
