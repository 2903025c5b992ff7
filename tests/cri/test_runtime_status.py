"""Status, RuntimeConfig, UpdateRuntimeConfig and the CNI config template, over a real CNI manager and conf dir."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cni.manager import NOT_READY_MESSAGE, NOT_READY_REASON, CniManager, Settings
from wharfd.cri import config as daemon_config
from wharfd.cri import runtime_config, runtime_status
from wharfd.cri.cni_template import Template, TemplateError
from wharfd.runtime import errors

CNI_BIN = "/usr/lib/cni"

# The kind of template nodes use (kind's, trimmed): ranges over the CIDRs and routes.
KIND_TEMPLATE = """{
  "cniVersion": "1.0.0",
  "name": "kindnet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "wtb-tmpl",
      "ipam": {
        "type": "host-local",
        "routes": [
          {{- range $i, $route := .Routes}}
          {{- if $i}},{{end}}
          {"dst": "{{ $route }}"}
          {{- end}}
        ],
        "ranges": [
          {{- range $i, $cidr := .PodCIDRRanges}}
          {{- if $i}},{{end}}
          [{"subnet": "{{ $cidr }}"}]
          {{- end}}
        ]
      }
    }
  ]
}
"""


def cri_section(conf_dir: Path, template: str = "", systemd: bool = False) -> dict[str, Any]:
    section: dict[str, Any] = copy.deepcopy(daemon_config.default_tree()["plugins"][daemon_config.CRI])
    section["cni"]["conf_dir"] = str(conf_dir)
    section["cni"]["bin_dir"] = CNI_BIN
    section["cni"]["conf_template"] = template
    section["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] = systemd
    return section


def manager(tmp_path: Path) -> CniManager:
    return CniManager(
        Settings(tmp_path / "net.d", (CNI_BIN,), tmp_path / "cache", max_conf_num=1, timeout=10)
    )


def write_conflist(conf_dir: Path, name: str = "wharfd-test-net") -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    doc = {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "bridge", "bridge": "wtb-unit"}]}
    (conf_dir / "10-test.conflist").write_text(json.dumps(doc))


def condition(response: cri.StatusResponse, kind: str) -> cri.RuntimeCondition:
    return next(c for c in response.status.conditions if c.type == kind)


# -- Status -------------------------------------------------------------------------------------


def test_network_ready_turns_true_when_a_config_appears_without_restart(tmp_path: Path) -> None:
    cni = manager(tmp_path)
    status = runtime_status.RuntimeStatus(cni, cri_section(tmp_path / "net.d"), [])

    async def main() -> tuple[cri.StatusResponse, cri.StatusResponse]:
        before = await status.status(cri.StatusRequest())
        write_conflist(tmp_path / "net.d")
        return before, await status.status(cri.StatusRequest())

    before, after = asyncio.run(main())
    assert condition(before, "RuntimeReady").status is True
    network = condition(before, "NetworkReady")
    assert network.status is False
    assert network.reason == NOT_READY_REASON == "NetworkPluginNotReady"
    assert network.message.startswith(NOT_READY_MESSAGE)
    assert NOT_READY_MESSAGE == "Network plugin returns error: cni plugin not initialized"
    ready = condition(after, "NetworkReady")
    assert (ready.status, ready.reason, ready.message) == (True, "", "")
    assert after.features.supplemental_groups_policy is True


def test_verbose_info_has_containerds_keys(tmp_path: Path) -> None:
    cni = manager(tmp_path)
    section = cri_section(tmp_path / "net.d")
    status = runtime_status.RuntimeStatus(cni, section, [])

    async def main() -> tuple[cri.StatusResponse, cri.StatusResponse, cri.StatusResponse]:
        empty = await status.status(cri.StatusRequest(verbose=True))
        write_conflist(tmp_path / "net.d", "wharfd-test-verbose")
        loaded = await status.status(cri.StatusRequest(verbose=True))
        return empty, loaded, await status.status(cri.StatusRequest())

    empty, loaded, terse = asyncio.run(main())
    assert set(loaded.info) == {"config", "cniconfig", "lastCNILoadStatus"}
    assert json.loads(loaded.info["config"])["cni"]["conf_dir"] == str(tmp_path / "net.d")
    dump = json.loads(loaded.info["cniconfig"])
    assert dump["PluginConfDir"] == str(tmp_path / "net.d")
    assert [n["Config"]["Name"] for n in dump["Networks"]] == ["wharfd-test-verbose"]
    assert dump["Networks"][0]["IFName"] == "eth0"
    assert loaded.info["lastCNILoadStatus"] == "OK"
    assert empty.info["lastCNILoadStatus"].startswith(NOT_READY_MESSAGE)
    assert json.loads(empty.info["cniconfig"])["Networks"] == []
    assert dict(terse.info) == {}


def test_handlers_from_runc_features() -> None:
    section = copy.deepcopy(daemon_config.default_tree()["plugins"][daemon_config.CRI])
    section["containerd"]["runtimes"]["kata"] = {"runtime_type": "io.containerd.kata.v2", "options": {}}
    handlers = runtime_status.probe_handlers(section)
    assert [h.name for h in handlers] == ["", "kata", "runc", "wharf"]
    rro = False
    if shutil.which("runc") is not None:
        # runc 1.1.5 here lists "rro" but no idmapped mounts: recursive read-only mounts are
        # promised where the kernel has mount_setattr, user namespaces are not.
        features = runtime_status.runtime_features("runc")
        assert "rro" in features["mountOptions"]
        assert not (features.get("linux") or {}).get("mountExtensions")
        rro = runtime_status._kernel_at_least((5, 12))
    by_name = {h.name: h for h in handlers}
    assert by_name["runc"].features.recursive_read_only_mounts is rro
    assert by_name["kata"].features.recursive_read_only_mounts is False  # no such binary: no features
    for handler in handlers:
        assert handler.features.user_namespaces is False


def test_handler_features_when_the_runtime_has_them() -> None:
    doc = {
        "mountOptions": ["ro", "rro"],
        "linux": {"namespaces": ["mount", "user"], "mountExtensions": {"idmap": {"enabled": True}}},
    }
    features = runtime_status.handler_features(doc, rro_applied=True)
    assert features.user_namespaces is True
    assert features.recursive_read_only_mounts is runtime_status._kernel_at_least((5, 12))
    assert runtime_status.handler_features(doc, rro_applied=False).recursive_read_only_mounts is False
    no_idmap = runtime_status.handler_features({"linux": {"namespaces": ["user"]}})
    assert no_idmap.user_namespaces is False
    assert runtime_status.runtime_features("/nonexistent/wharfd-test-runc") == {}


def test_default_handler_shares_the_features_of_its_runtime(tmp_path: Path) -> None:
    section = cri_section(tmp_path)
    section["containerd"]["runtimes"]["runc"]["options"]["BinaryName"] = "/nonexistent/wharfd-test-runc"
    section["containerd"]["default_runtime_name"] = "runc"
    handlers = {h.name: h for h in runtime_status.probe_handlers(section)}
    assert handlers[""].features == handlers["runc"].features


def test_status_without_cni_manager_reports_network_ready() -> None:
    status = runtime_status.RuntimeStatus(None, {}, [cri.RuntimeHandler(name="")])
    response = asyncio.run(status.status(cri.StatusRequest(verbose=True)))
    assert condition(response, "NetworkReady").status is True
    assert [h.name for h in response.runtime_handlers] == [""]


# -- RuntimeConfig -------------------------------------------------------------------------------


def test_cgroup_driver_follows_the_default_runc_runtime(tmp_path: Path) -> None:
    assert runtime_config.cgroup_driver(cri_section(tmp_path)) == cri.CGROUPFS
    assert runtime_config.cgroup_driver(cri_section(tmp_path, systemd=True)) == cri.SYSTEMD
    # The default runtime decides before the others, whatever their names.
    section = cri_section(tmp_path, systemd=True)
    section["containerd"]["runtimes"]["aaa"] = {"runtime_type": "io.containerd.runc.v2", "options": {}}
    assert runtime_config.cgroup_driver(section) == cri.SYSTEMD
    # No runc-type runtime: the host decides.
    vm = {"containerd": {"default_runtime_name": "vm", "runtimes": {"vm": {"runtime_type": "io.x.v1"}}}}
    assert runtime_config.cgroup_driver(vm, systemd_running=True) == cri.SYSTEMD
    assert runtime_config.cgroup_driver(vm, systemd_running=False) == cri.CGROUPFS


def test_runtime_config_is_fixed_for_the_daemons_life(tmp_path: Path) -> None:
    section = cri_section(tmp_path)
    service = runtime_config.RuntimeConfigService(section)
    assert service.runtime_config().linux.cgroup_driver == cri.CGROUPFS
    section["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] = True
    assert service.runtime_config().linux.cgroup_driver == cri.CGROUPFS


def update(cidr: str) -> cri.UpdateRuntimeConfigRequest:
    return cri.UpdateRuntimeConfigRequest(
        runtime_config=cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr=cidr))
    )


def test_update_runtime_config_rejects_a_bad_cidr(tmp_path: Path) -> None:
    service = runtime_config.RuntimeConfigService(cri_section(tmp_path))
    with pytest.raises(errors.InvalidArgument, match=r"network_config.pod_cidr: '10.0.0.0/33'"):
        asyncio.run(service.update(update("10.244.0.0/24, 10.0.0.0/33")))
    assert service.pod_cidrs == []


def test_update_runtime_config_records_cidrs_without_a_template(tmp_path: Path) -> None:
    service = runtime_config.RuntimeConfigService(cri_section(tmp_path / "net.d"), manager(tmp_path))
    asyncio.run(service.update(update("")))
    assert service.pod_cidrs == []
    asyncio.run(service.update(update("10.244.1.0/24,fd00:10:244:1::/64")))
    assert service.pod_cidrs == ["10.244.1.0/24", "fd00:10:244:1::/64"]
    assert not (tmp_path / "net.d").exists()


def test_update_runtime_config_renders_the_template_and_the_network_becomes_ready(tmp_path: Path) -> None:
    template = tmp_path / "template.conflist"
    template.write_text(KIND_TEMPLATE)
    conf_dir = tmp_path / "net.d"
    cni = manager(tmp_path)
    section = cri_section(conf_dir, template=str(template))
    service = runtime_config.RuntimeConfigService(section, cni)
    status = runtime_status.RuntimeStatus(cni, section, [])

    async def main() -> tuple[bool, bool]:
        before = condition(await status.status(cri.StatusRequest()), "NetworkReady").status
        await service.update(update("10.244.1.0/24, fd00:10:244:1::/64"))
        return before, condition(await status.status(cri.StatusRequest()), "NetworkReady").status

    before, after = asyncio.run(main())
    written = conf_dir / runtime_config.GENERATED_CONF
    doc = json.loads(written.read_text())
    ipam = doc["plugins"][0]["ipam"]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
    assert (before, after) == (False, True)
    # Once the network is ready the template is left alone.
    written.write_text(written.read_text().replace("kindnet", "edited"))
    asyncio.run(service.update(update("10.244.9.0/24")))
    assert json.loads(written.read_text())["name"] == "edited"


def test_update_runtime_config_with_an_unreadable_template(tmp_path: Path) -> None:
    section = cri_section(tmp_path / "net.d", template=str(tmp_path / "missing.tmpl"))
    service = runtime_config.RuntimeConfigService(section, manager(tmp_path))
    with pytest.raises(errors.FailedPrecondition, match=r"cni\.conf_template .*missing\.tmpl.*cannot read"):
        asyncio.run(service.update(update("10.244.0.0/16")))


# -- the template subset -------------------------------------------------------------------------


def test_template_fields_conditions_and_ranges() -> None:
    data = {"PodCIDR": "10.1.0.0/16", "PodCIDRRanges": ["10.1.0.0/16", "fd00::/64"], "Routes": []}
    assert Template("t", "cidr={{.PodCIDR}} all={{ .PodCIDRRanges }}").render(data) == (
        "cidr=10.1.0.0/16 all=[10.1.0.0/16 fd00::/64]"
    )
    assert Template("t", "{{range .PodCIDRRanges}}<{{.}}>{{end}}").render(data) == "<10.1.0.0/16><fd00::/64>"
    assert Template("t", "{{range .Routes}}x{{else}}none{{end}}").render(data) == "none"
    text = "{{if .Routes}}r{{else if .PodCIDR}}c{{else}}n{{end}}"
    assert Template("t", text).render(data) == "c"
    assert Template("t", "a  {{- /* note */ -}}  b").render(data) == "ab"
    assert Template("t", "{{range $c := .PodCIDRRanges}}{{$c}}{{$.PodCIDR}};{{end}}").render(data) == (
        "10.1.0.0/1610.1.0.0/16;fd00::/6410.1.0.0/16;"
    )
    assert Template("t", '{{ "lit" }} {{ 3 }} {{ true }}').render(data) == "lit 3 true"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{{len .PodCIDRRanges}}", "'len' is not supported"),
        ("{{.PodCIDR | printf}}", "not supported"),
        ("{{if .PodCIDR}}x", "has no {{end}}"),
        ("{{range .Routes}}x", "has no {{end}}"),
        ("x{{end}}", "unexpected {{end}}"),
        ("{{/* open", "unclosed action"),
        ("{{/* open }}", "unclosed comment"),
    ],
)
def test_template_refuses_what_it_does_not_support(text: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=r"CNI config template t: .*" + problem.replace("{", r"\{")):
        Template("t", text)


def test_template_unknown_field_names_it() -> None:
    with pytest.raises(TemplateError, match="can't evaluate field NodeName"):
        Template("t", "{{.NodeName}}").render({"PodCIDR": "x"})
    with pytest.raises(TemplateError, match="undefined variable or function '\\$x'"):
        Template("t", "{{$x}}").render({})
