"""ctr's container flags (``wharfd.runtime.ctr.spec_flags``) and the spec they build, without an image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime import errors
from wharfd.runtime.ctr import commands, spec_flags
from wharfd.runtime.ctr.specjson import go_order
from wharfd.runtime.oci import spec as oci_spec


def parse(*argv: str, run: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    spec_flags.add_flags(parser)
    if run:
        spec_flags.add_run_flags(parser)
    parser.add_argument("args", nargs="*")
    return parser.parse_args(argv)


def build(*argv: str, run: bool = False) -> oci_spec.Spec:
    return spec_flags.build_spec("default", "c1", parse(*argv, run=run), None)


def test_no_flags_is_the_default_spec_with_unix_devices() -> None:
    spec = build()
    assert spec["linux"]["cgroupsPath"] == "/default/c1"
    devices = spec["linux"]["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"} and len(devices) == 10
    assert "seccomp" not in spec["linux"] and "annotations" not in spec
    assert spec["process"]["noNewPrivileges"] is True


@pytest.mark.parametrize(
    ("text", "mount"),
    [
        (
            "type=bind,src=/a,dst=/b,options=rbind:ro",
            {"type": "bind", "source": "/a", "destination": "/b", "options": ["rbind", "ro"]},
        ),
        ("destination=/x,type=tmpfs,source=tmpfs", {"destination": "/x", "type": "tmpfs", "source": "tmpfs"}),
        ('type=bind,"src=/with,comma",dst=/c', {"type": "bind", "source": "/with,comma", "destination": "/c"}),
    ],
)  # fmt: skip
def test_parse_mount(text: str, mount: dict[str, object]) -> None:
    assert spec_flags.parse_mount(text) == mount


@pytest.mark.parametrize(
    ("text", "message"),
    [("type=bind,nokey", "expected key=val"), ("type=bind,bogus=1", 'mount option "bogus" not supported')],
)
def test_parse_mount_errors(text: str, message: str) -> None:
    with pytest.raises(commands.CommandError, match=message):
        spec_flags.parse_mount(text)


def test_mounts_replace_defaults_at_the_same_destination() -> None:
    spec = build(
        "--mount", "type=tmpfs,src=tmpfs,dst=/run,options=nosuid", "--mount", "type=bind,src=/h,dst=/data"
    )
    runs = [m for m in spec["mounts"] if m["destination"] == "/run"]
    assert runs == [{"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}]
    assert spec["mounts"][-1]["destination"] == "/data"
    with pytest.raises(errors.InvalidArgument, match="must be an absolute path"):
        build("--mount", "type=bind,src=/h")


def test_env_file_then_env_flags(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("A=file\n\nB=file\n")
    spec = build("--env-file", str(env_file), "--env", "B=flag", "--env", "C=3")
    assert spec["process"]["env"] == ["A=file", "B=flag", "C=3"]


def test_process_and_resource_flags() -> None:
    spec = build(
        "-t", "--cwd", "/w", "--hostname", "h", "--read-only", "--memory-limit", "4096", "--cpus", "1.5",
        "--cap-add", "CAP_SYS_ADMIN", "--cap-drop", "CAP_CHOWN", "--allow-new-privs", "--label", "a=1",
        "--annotation", "x=", "--with-ns", "network:/run/netns/n", "--cgroup", "", "--", "sh", "-c", "true",
    )  # fmt: skip
    process, linux = spec["process"], spec["linux"]
    assert process["args"] == ["sh", "-c", "true"] and process["cwd"] == "/w"
    assert process["terminal"] is True and "TERM=xterm" in process["env"]
    assert "noNewPrivileges" not in process
    assert "CAP_SYS_ADMIN" in process["capabilities"]["bounding"]
    assert "CAP_CHOWN" not in process["capabilities"]["effective"]
    assert spec["hostname"] == "h" and spec["root"]["readonly"] is True
    assert linux["resources"]["memory"] == {"limit": 4096}
    assert linux["resources"]["cpu"] == {"quota": 150000, "period": 100000}
    assert {"type": "network", "path": "/run/netns/n"} in linux["namespaces"]
    assert "cgroupsPath" not in linux  # --cgroup "" disables it, as in ctr
    assert spec["annotations"] == {"x": "", "a": "1"}


def test_privileged_net_host_and_seccomp(tmp_path: Path) -> None:
    spec = build("--privileged", "--net-host", "--seccomp")
    linux = spec["linux"]
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "maskedPaths" not in linux and "network" not in [n["type"] for n in linux["namespaces"]]
    assert [m["destination"] for m in spec["mounts"][-2:]] == ["/etc/hosts", "/etc/resolv.conf"]
    assert any(e.startswith("HOSTNAME=") for e in spec["process"]["env"])
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG"}))
    assert build("--seccomp", "--seccomp-profile", str(profile))["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_LOG"
    }


def test_run_flags() -> None:
    spec = build("--cpuset-cpus", "0-1", "--rlimit-nofile", "64:128", run=True)
    assert spec["linux"]["resources"]["cpu"] == {"cpus": "0-1", "shares": 1024}
    assert {"type": "RLIMIT_NOFILE", "hard": 128, "soft": 64} in spec["process"]["rlimits"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cap-add", "NET_ADMIN"], "capabilities must be specified with 'CAP_' prefix"),
        (["--cap-drop", "chown"], "capabilities must be specified with 'CAP_' prefix"),
        (["--with-ns", "network"], "requires the format 'nstype:path'"),
        (["--with-ns", "time:/x"], "not valid: time"),
        (["--seccomp-profile", "/p.json"], "seccomp must be set to true"),
        (["--user", "app"], 'user "app": needs an image rootfs'),
        (["--annotation", "novalue"], 'invalid annotation "novalue"'),
        (["--rlimit-nofile", "x"], 'failed to parse rlimit-nofile "x"'),
    ],
)
def test_flag_errors(argv: list[str], message: str) -> None:
    run = "--rlimit-nofile" in argv
    with pytest.raises(commands.CommandError, match=message):
        build(*argv, run=run)


def test_default_runtime_is_wharfs_shim() -> None:
    assert parse().runtime == "io.containerd.wharf.v2"


@pytest.mark.parametrize(
    "runtime", [[], ["--runtime", "io.containerd.wharf.v2"], ["--runtime", "io.containerd.runc.v2"]]
)
def test_runc_runtimes_take_runc_options(runtime: list[str]) -> None:
    # wharfd's shim takes runc v2's options, so both get them exactly as ctr sends them to runc v2.
    default = spec_flags.runtime_options(parse(*runtime))
    assert default is not None and default.type_url == "containerd.runc.v1.Options" and default.value == b""
    tuned = spec_flags.runtime_options(parse(*runtime, "--runc-binary", "crun", "--runc-root", "/r"))
    assert tuned is not None and tuned.type_url == "containerd.runc.v1.Options"
    assert oci_pb2.Options.FromString(tuned.value) == oci_pb2.Options(binary_name="crun", root="/r")
    systemd = spec_flags.runtime_options(parse(*runtime, "--runc-systemd-cgroup", "--cgroup", "m.slice:p:c"))
    assert systemd is not None and oci_pb2.Options.FromString(systemd.value).systemd_cgroup
    with pytest.raises(commands.CommandError, match="requires --cgroup"):
        spec_flags.runtime_options(parse(*runtime, "--runc-systemd-cgroup"))


def test_other_runtimes_take_no_options() -> None:
    assert spec_flags.runtime_options(parse("--runtime", "io.containerd.kata.v2")) is None
    for flag in (["--runc-binary", "crun"], ["--runc-systemd-cgroup"]):
        with pytest.raises(commands.CommandError, match="only supported for"):
            spec_flags.runtime_options(parse("--runtime", "io.containerd.kata.v2", *flag))


def test_go_order_keeps_the_default_spec_as_it_is() -> None:
    # The oci module already writes Go's order; printing must not reshuffle it.
    spec = build("--seccomp", "--privileged")
    assert json.dumps(go_order(spec)) == json.dumps(spec)
    shuffled = {
        "linux": {"namespaces": [{"path": "/p", "type": "pid"}]},
        "ociVersion": "1",
        "root": {"readonly": True, "path": "r"},
    }
    ordered = {"ociVersion": "1", "root": {"path": "r", "readonly": True}}
    ordered["linux"] = {"namespaces": [{"type": "pid", "path": "/p"}]}
    assert json.dumps(go_order(shuffled)) == json.dumps(ordered)
