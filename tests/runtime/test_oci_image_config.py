"""Image config application: ctr's and the CRI's argv rules, env merge, cwd, user, stop signal."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from wharfd.runtime import errors
from wharfd.runtime.oci import image_config as ic
from wharfd.runtime.oci import process as proc
from wharfd.runtime.oci import spec as oci
from wharfd.runtime.oci.image_config import RunConfig

IMAGE = RunConfig(entrypoint=("/entry", "-x"), cmd=("serve", "--port=80"))


def test_from_json_reads_fields_and_checks_types() -> None:
    config = RunConfig.from_json(
        {
            "User": "app",
            "Env": ["A=1"],
            "Entrypoint": ["/e"],
            "Cmd": None,
            "WorkingDir": "/w",
            "StopSignal": "SIGQUIT",
            "Labels": {"k": "v"},
        }
    )
    assert config == RunConfig("app", ("A=1",), ("/e",), (), "/w", "SIGQUIT", {"k": "v"})
    assert RunConfig.from_json(None) == RunConfig()
    with pytest.raises(errors.InvalidArgument, match=r"image config.config.Cmd: expected a list of strings"):
        RunConfig.from_json({"Cmd": "sh -c true"})
    with pytest.raises(errors.InvalidArgument, match=r"\.User: expected a string"):
        RunConfig.from_json({"User": 0})


@pytest.mark.parametrize(
    ("config", "args", "expected"),
    [
        (IMAGE, (), ["/entry", "-x", "serve", "--port=80"]),
        (IMAGE, ("sh",), ["/entry", "-x", "sh"]),  # ctr: args replace Cmd only
        (RunConfig(cmd=("sh",)), ("ls", "/"), ["ls", "/"]),
        (RunConfig(), (), []),
    ],
)
def test_ctr_process_args(config: RunConfig, args: tuple[str, ...], expected: list[str]) -> None:
    assert ic.ctr_process_args(config, args) == expected


@pytest.mark.parametrize(
    ("config", "command", "args", "expected"),
    [
        (IMAGE, (), (), ["/entry", "-x", "serve", "--port=80"]),
        (IMAGE, (), ("--port=81",), ["/entry", "-x", "--port=81"]),  # args replace Cmd
        (IMAGE, ("/bin/sh",), (), ["/bin/sh"]),  # command replaces Entrypoint and drops Cmd
        (IMAGE, ("/bin/sh",), ("-c", "id"), ["/bin/sh", "-c", "id"]),
        (RunConfig(entrypoint=("",), cmd=("sh",)), (), (), ["sh"]),  # ENTRYPOINT [""] resets it
        (RunConfig(cmd=("sh",)), (), ("ls",), ["ls"]),
    ],
)
def test_cri_process_args(
    config: RunConfig, command: tuple[str, ...], args: tuple[str, ...], expected: list[str]
) -> None:
    assert ic.cri_process_args(config, command, args) == expected


def test_cri_without_any_command_is_invalid() -> None:
    with pytest.raises(errors.InvalidArgument, match="no command specified"):
        ic.cri_process_args(RunConfig())


def test_image_env_defaults_to_path() -> None:
    assert ic.image_env(RunConfig()) == [oci.DEFAULT_PATH_ENV]
    assert ic.image_env(RunConfig(env=("PATH=/opt/bin", "X=1"))) == ["PATH=/opt/bin", "X=1"]


@pytest.mark.parametrize(
    ("name", "number"),
    [("SIGTERM", 15), ("TERM", 15), ("sigquit", 3), ("9", 9), ("SIGRTMIN+3", signal.SIGRTMIN + 3)],
)
def test_parse_signal(name: str, number: int) -> None:
    assert ic.parse_signal(name) == number


@pytest.mark.parametrize("name", ["SIGNOPE", "0", "999", "SIGRTMIN+x", ""])
def test_parse_signal_rejects(name: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="stop signal"):
        ic.parse_signal(name)


def test_stop_signal_label_value() -> None:
    assert ic.STOP_SIGNAL_LABEL == "io.containerd.image.config.stop-signal"
    assert ic.stop_signal(RunConfig()) == "SIGTERM"
    assert ic.stop_signal(RunConfig(stop_signal="SIGQUIT")) == "SIGQUIT"
    with pytest.raises(errors.InvalidArgument, match="StopSignal"):
        ic.stop_signal(RunConfig(stop_signal="SIGBOGUS"))


def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nwheel:x:10:root\nwww:x:33:\nlog:x:4:web\n")
    return root


def test_with_image_config_like_ctr(tmp_path: Path) -> None:
    config = RunConfig(
        user="web", env=("PATH=/usr/bin", "MODE=prod", "KEEP=1"), cmd=("nginx",), working_dir="/var/www"
    )
    spec = oci.generate(
        "default",
        "c1",
        proc.with_env(["MODE=dev", "EXTRA=1"]),
        ic.with_image_config(config, image_root(tmp_path)),
    )
    process = spec["process"]
    assert process["env"] == ["PATH=/usr/bin", "MODE=dev", "KEEP=1", "EXTRA=1"]
    assert process["args"] == ["nginx"]
    assert process["cwd"] == "/var/www"
    assert process["user"] == {"uid": 33, "gid": 33, "additionalGids": [33, 4]}


def test_with_image_config_defaults(tmp_path: Path) -> None:
    spec = oci.generate(
        "default", "c1", ic.with_image_config(RunConfig(cmd=("sh",)), image_root(tmp_path), args=("id",))
    )
    process = spec["process"]
    assert process["env"] == [oci.DEFAULT_PATH_ENV]
    assert (process["args"], process["cwd"]) == (["id"], "/")
    assert process["user"] == {"uid": 0, "gid": 0, "additionalGids": [0, 10]}


def test_with_image_config_missing_user_names_user_and_image(tmp_path: Path) -> None:
    opt = ic.with_image_config(
        RunConfig(user="nobody"), image_root(tmp_path), image="docker.io/library/web:1"
    )
    with pytest.raises(errors.InvalidArgument, match=r'user "nobody" of image "docker.io/library/web:1"'):
        oci.generate("default", "c1", opt)


def test_with_image_config_relative_workdir(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match=r'WorkingDir "app" of image "i"'):
        ic.with_image_config(RunConfig(working_dir="app"), image_root(tmp_path), image="i")


def test_with_image_user_overrides_after_image_config(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    spec = oci.generate(
        "default", "c1", ic.with_image_config(RunConfig(user="web"), root), ic.with_image_user("1000:4", root)
    )
    assert spec["process"]["user"] == {"uid": 1000, "gid": 4, "additionalGids": [4]}
