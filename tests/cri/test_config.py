"""The daemon configuration: defaults, files, imports, validation, version conversion, durations."""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path
from typing import Any

import pytest

from wharfd.cri import config
from wharfd.cri.config import CRI, ConfigError
from wharfd.runtime.plugin import HOST_PLATFORM

CRI_KEY = 'plugins."io.containerd.grpc.v1.cri"'


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load_text(tmp_path: Path, text: str, name: str = "config.toml") -> config.Config:
    return config.load(write(tmp_path / name, text))


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "\n" not in message
    prefix = f"{path}: "
    assert message.startswith(prefix), message
    return message[len(prefix) :]


# ---- defaults


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    cfg = config.load()
    assert cfg.version == 2
    assert cfg.sources == [] and cfg.warnings == []
    assert cfg.root == "/var/lib/wharfd" and cfg.state == "/run/wharfd"
    assert cfg.grpc.address == "/run/wharfd/wharfd.sock"
    assert cfg.grpc.max_recv_message_size == cfg.grpc.max_send_message_size == 16 * 1024 * 1024
    assert cfg.ttrpc_address() == "/run/wharfd/wharfd.sock.ttrpc"
    assert cfg.debug.level == "info" and cfg.debug.format == "text"
    assert cfg.timeouts == {
        "io.containerd.timeout.shim.cleanup": 5.0,
        "io.containerd.timeout.shim.load": 5.0,
        "io.containerd.timeout.shim.shutdown": 3.0,
        "io.containerd.timeout.task.state": 2.0,
    }
    cri = cfg.plugin(CRI)
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10"
    assert cri["stream_idle_timeout"] == "4h0m0s"
    assert cri["containerd"]["default_runtime_name"] == "runc"
    # The default handler runs the shim installed with wharfd, not containerd's.
    assert cri["containerd"]["runtimes"]["runc"]["runtime_type"] == "io.containerd.wharf.v2"
    assert cri["containerd"]["runtimes"]["runc"]["options"] == config.RUNC_OPTIONS
    assert cri["containerd"]["runtimes"]["wharf"]["runtime_type"] == "io.containerd.wharf.v2"
    assert cri["containerd"]["runtimes"]["wharf"]["options"] == config.RUNC_OPTIONS
    assert cri["cni"]["bin_dir"] == "/opt/cni/bin"
    assert cfg.plugin("io.containerd.gc.v1.scheduler")["startup_delay"] == "100ms"
    assert cfg.plugin("io.containerd.runtime.v2.task")["platforms"] == [HOST_PLATFORM]
    assert cfg.plugin("io.containerd.content.v1.content") == {}
    assert cfg.plugin("io.containerd.metadata.v1.sqlite") == {"content_sharing_policy": "shared"}
    assert cfg.duration(CRI, "image_pull_progress_timeout") == 300.0
    assert cfg.to_tree() == config.default_tree()


def test_default_path_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "config.toml", 'version = 2\nroot = "/srv/wharfd"\n')
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    cfg = config.load()
    assert cfg.root == "/srv/wharfd" and cfg.sources == [path]


def test_config_constructed_directly_has_the_defaults() -> None:
    assert config.Config(version=2).to_tree() == config.default_tree()


def test_default_tree_is_fresh_each_time() -> None:
    tree = config.default_tree()
    tree["plugins"][CRI]["cdi_spec_dirs"].append("/x")
    assert config.default_tree()["plugins"][CRI]["cdi_spec_dirs"] == ["/etc/cdi", "/var/run/cdi"]


# ---- TOML writing


def test_round_trip_of_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", config.dumps(config.default_tree()))
    cfg = config.load(path)
    assert cfg.to_tree() == config.default_tree()
    assert cfg.warnings == [] and cfg.sources == [path]


def test_round_trip_of_a_loaded_config(tmp_path: Path) -> None:
    first = load_text(
        tmp_path,
        """
version = 2
[timeouts]
"io.containerd.timeout.shim.load" = "1m30s"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
runtime_type = "io.containerd.kata.v2"
options = { ConfigPath = "/etc/kata/configuration.toml" }
""",
    )
    second = load_text(tmp_path, config.dumps(first.to_tree()), name="dumped.toml")
    assert second.to_tree() == first.to_tree()
    assert second.timeouts["io.containerd.timeout.shim.load"] == 90.0


def test_dumps_writes_valid_toml_for_awkward_values() -> None:
    tree: dict[str, Any] = {
        "plain": 'quote " backslash \\ tab \t newline \n bell \x07 del \x7f ü',
        "neg": -3,
        "big": 2**62,
        "ratio": 0.02,
        "tiny": 1e-9,
        "whole": 2.0,
        "flags": [True, False],
        "empty": [],
        "nested": [[1, 2], ["a"]],
        "records": [{"name": "x", "n": 1}, {}],
        "when": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
        "day": datetime.date(2024, 5, 6),
        "a.b": {"key with spaces": 1, "ключ": "значение", "": "empty key"},
        "outer": {"inner": {"deep": {}}, "after": "scalar after a table"},
        "table_only": {},
    }
    assert tomllib.loads(config.dumps(tree)) == tree


# ---- files, merging, imports


def test_file_values_merge_over_defaults(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
version = 2
oom_score = -999
[grpc]
uid = 1000
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
SystemdCgroup = true
[plugins."io.containerd.gc.v1.scheduler"]
pause_threshold = 0
""",
    )
    assert cfg.oom_score == -999
    assert cfg.grpc.uid == 1000 and cfg.grpc.address == "/run/wharfd/wharfd.sock"
    runc = cfg.plugin(CRI)["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True
    assert runc["options"]["BinaryName"] == "" and runc["runtime_type"] == "io.containerd.wharf.v2"
    gc = cfg.plugin("io.containerd.gc.v1.scheduler")
    assert gc["pause_threshold"] == 0.0 and isinstance(gc["pause_threshold"], float)
    assert gc["mutation_threshold"] == 100
    assert cfg.warnings == []


def test_new_runtimes_start_from_the_runtime_defaults(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
default_runtime_name = "crun"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
BinaryName = "/usr/bin/crun"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
runtime_type = "io.containerd.kata.v2"
pod_annotations = ["io.katacontainers.*"]
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata.options]
ConfigPath = "/etc/kata/configuration.toml"
""",
    )
    runtimes = cfg.plugin(CRI)["containerd"]["runtimes"]
    assert set(runtimes) == {"runc", "wharf", "crun", "kata"}
    crun = runtimes["crun"]
    assert crun["runtime_type"] == "io.containerd.runc.v2" and crun["sandbox_mode"] == "podsandbox"
    assert crun["options"] == {**config.RUNC_OPTIONS, "BinaryName": "/usr/bin/crun"}
    kata = runtimes["kata"]
    assert kata["pod_annotations"] == ["io.katacontainers.*"] and kata["snapshotter"] == ""
    # Another shim's options are its own: passed through, not filled with runc's.
    assert kata["options"] == {"ConfigPath": "/etc/kata/configuration.toml"}
    assert cfg.warnings == []


def test_a_containerd_config_naming_the_stock_shim_keeps_it(tmp_path: Path) -> None:
    """A node's containerd config that says io.containerd.runc.v2 still drives the stock shim, with runc's options."""
    cfg = load_text(
        tmp_path,
        """
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
SystemdCgroup = true
NoSuchOption = 1
""",
    )
    runtimes = cfg.plugin(CRI)["containerd"]["runtimes"]
    assert runtimes["runc"]["runtime_type"] == config.RUNC_V2
    assert runtimes["runc"]["options"] == {**config.RUNC_OPTIONS, "SystemdCgroup": True}
    assert runtimes["wharf"]["runtime_type"] == config.WHARF_V2
    assert cfg.warnings == [
        f"{tmp_path / 'config.toml'}: {CRI_KEY}.containerd.runtimes.runc.options.NoSuchOption: "
        "unknown runc option (ignored)"
    ]
    assert (
        tomllib.loads(config.dumps(cfg.to_tree()))["plugins"][CRI]["containerd"]["runtimes"]["runc"][
            "runtime_type"
        ]
        == "io.containerd.runc.v2"
    )


def test_the_default_handler_may_name_another_shim(tmp_path: Path) -> None:
    """runc's entry given a non-runc type keeps that shim's options unchecked (runc's would warn)."""
    cfg = load_text(
        tmp_path,
        """
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_type = "io.containerd.kata.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
ConfigPath = "/etc/kata/configuration.toml"
""",
    )
    runc = cfg.plugin(CRI)["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.kata.v2"
    assert runc["options"]["ConfigPath"] == "/etc/kata/configuration.toml" and cfg.warnings == []


def test_imports_globs_and_precedence(tmp_path: Path) -> None:
    main = write(
        tmp_path / "config.toml",
        """
version = 2
imports = ["conf.d/*.toml", "extra/explicit.toml", "none.d/*.toml"]
root = "/main/root"
state = "/main/state"
disabled_plugins = ["io.containerd.snapshotter.v1.native"]
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "main/pause:1"
max_concurrent_downloads = 5
""",
    )
    a = write(
        tmp_path / "conf.d/10-a.toml",
        """
root = "/a/root"
disabled_plugins = ["io.containerd.tracing.processor.v1.otlp", "io.containerd.snapshotter.v1.native"]
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "a/pause:2"
""",
    )
    b = write(
        tmp_path / "conf.d/20-b.toml",
        """
version = 2
imports = ["../nested.toml"]
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "b/pause:3"
""",
    )
    write(tmp_path / "conf.d/ignored.txt", "not = [valid")
    explicit = write(tmp_path / "extra/explicit.toml", 'root = "/explicit/root"\n')
    nested = write(tmp_path / "nested.toml", 'imports = ["config.toml"]\nstate = "/nested/state"\n')

    cfg = config.load(main)
    # Read breadth first, main file first; the cycle back to config.toml is not followed.
    assert cfg.sources == [main, a, b, explicit, nested]
    # Later files override earlier ones, as in containerd: drop-ins win over the main file.
    assert cfg.root == "/explicit/root"
    assert cfg.state == "/nested/state"
    cri = cfg.plugin(CRI)
    assert cri["sandbox_image"] == "b/pause:3"
    assert cri["max_concurrent_downloads"] == 5  # only the main file set it
    assert cfg.disabled_plugins == [
        "io.containerd.snapshotter.v1.native",
        "io.containerd.tracing.processor.v1.otlp",
    ]
    assert cfg.imports == [
        str(tmp_path / "conf.d/*.toml"),
        str(tmp_path / "extra/explicit.toml"),
        str(tmp_path / "none.d/*.toml"),
        str(tmp_path / "nested.toml"),
        str(tmp_path / "config.toml"),
    ]
    assert cfg.warnings == []


def test_imports_merge_per_plugin_and_per_key(tmp_path: Path) -> None:
    main = write(
        tmp_path / "config.toml",
        """
version = 2
imports = ["conf.d/*.toml"]
[plugins."io.containerd.gc.v1.scheduler"]
deletion_threshold = 7
[plugins."io.containerd.grpc.v1.cri"]
max_container_log_line_size = 4096
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
BinaryName = "/usr/local/bin/runc"
""",
    )
    write(
        tmp_path / "conf.d/cni.toml",
        """
version = 2
[plugins."io.containerd.grpc.v1.cri".cni]
bin_dir = "/usr/libexec/cni"
""",
    )
    write(
        tmp_path / "conf.d/registry.toml",
        """
version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
config_path = "/etc/wharfd/certs.d"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
SystemdCgroup = true
""",
    )
    cfg = config.load(main)
    cri = cfg.plugin(CRI)
    assert cri["cni"]["bin_dir"] == "/usr/libexec/cni"
    assert cri["cni"]["conf_dir"] == "/etc/cni/net.d"
    assert cri["registry"]["config_path"] == "/etc/wharfd/certs.d"
    assert cri["max_container_log_line_size"] == 4096
    options = cri["containerd"]["runtimes"]["runc"]["options"]
    assert options["BinaryName"] == "/usr/local/bin/runc" and options["SystemdCgroup"] is True
    assert cfg.plugin("io.containerd.gc.v1.scheduler")["deletion_threshold"] == 7


def test_an_imported_file_may_name_the_default_runtime_it_defines(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", 'version = 2\nimports = ["99-nvidia.toml"]\n')
    write(
        tmp_path / "99-nvidia.toml",
        """
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
default_runtime_name = "nvidia"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
BinaryName = "/usr/bin/nvidia-container-runtime"
""",
    )
    cri = config.load(main).plugin(CRI)
    assert cri["containerd"]["default_runtime_name"] == "nvidia"
    assert cri["containerd"]["runtimes"]["nvidia"]["runtime_type"] == "io.containerd.runc.v2"


def test_proxy_plugins_and_stream_processors(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
version = 2
[proxy_plugins.stargz]
type = "snapshot"
address = "/run/stargz/stargz.sock"
exports = { root = "/var/lib/stargz" }
[stream_processors."io.containerd.ocicrypt.decoder.v1.tar"]
accepts = ["application/vnd.oci.image.layer.v1.tar+encrypted"]
returns = "application/vnd.oci.image.layer.v1.tar"
path = "ctd-decoder"
""",
    )
    assert cfg.proxy_plugins["stargz"]["address"] == "/run/stargz/stargz.sock"
    assert cfg.proxy_plugins["stargz"]["exports"] == {"root": "/var/lib/stargz"}
    assert cfg.stream_processors["io.containerd.ocicrypt.decoder.v1.tar"]["path"] == "ctd-decoder"
    assert cfg.warnings == []
    assert config.load(write(tmp_path / "again.toml", config.dumps(cfg.to_tree()))).to_tree() == cfg.to_tree()


# ---- validation

ERRORS = [
    ('[grpc]\nuid = "root"', 'grpc.uid: expected an integer, got string "root"'),
    ("[grpc]\ngid = -1", "grpc.gid: must be between 0 and 4294967294, got -1"),
    (
        "[grpc]\nmax_recv_message_size = 0",
        "grpc.max_recv_message_size: must be between 1 and 2147483647, got 0",
    ),
    (
        "[grpc]\nmax_send_message_size = 4294967296",
        "grpc.max_send_message_size: must be between 1 and 2147483647, got 4294967296",
    ),
    ('[grpc]\naddress = ""', "grpc.address: must not be empty"),
    ("grpc = 5", "grpc: expected a table, got integer 5"),
    ("oom_score = true", "oom_score: expected an integer, got boolean true"),
    ("oom_score = -1001", "oom_score: must be between -1000 and 1000, got -1001"),
    ('root = "var/lib/wharfd"', 'root: must be an absolute path, got "var/lib/wharfd"'),
    (
        'disabled_plugins = ["cri"]',
        'disabled_plugins: "cri" is not a plugin URI: use a full name like "io.containerd.gc.v1.scheduler"',
    ),
    (
        '[debug]\nlevel = "loud"',
        'debug.level: must be one of "trace", "debug", "info", "warn", "warning", '
        '"error", "fatal", "panic"; got "loud"',
    ),
    ('[debug]\nformat = "xml"', 'debug.format: must be one of "text", "json"; got "xml"'),
    (
        '[timeouts]\n"io.containerd.timeout.shim.load" = 5',
        'timeouts."io.containerd.timeout.shim.load": expected a duration string such as "5s", got integer 5',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri"]\nimage_pull_progress_timeout = "5 minutes"',
        'plugins."io.containerd.grpc.v1.cri".image_pull_progress_timeout: invalid duration "5 minutes": '
        'unknown unit " minutes"; use Go syntax such as "300ms", "1.5s", "5m0s" or "1h"',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri"]\nstream_idle_timeout = "-1s"',
        'plugins."io.containerd.grpc.v1.cri".stream_idle_timeout: must not be negative',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri"]\nstream_server_port = 10010',
        'plugins."io.containerd.grpc.v1.cri".stream_server_port: expected a string, got integer 10010',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri"]\nstream_server_port = "http"',
        'plugins."io.containerd.grpc.v1.cri".stream_server_port: '
        'must be a port number from "0" (any free port) to "65535", got "http"',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri"]\ncdi_spec_dirs = ["/etc/cdi", 1]',
        'plugins."io.containerd.grpc.v1.cri".cdi_spec_dirs[1]: expected a string, got integer 1',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri"]\nenable_cdi = "yes"',
        'plugins."io.containerd.grpc.v1.cri".enable_cdi: expected a boolean, got string "yes"',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]\nruntime_type = "kata"',
        'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata.runtime_type: '
        'unknown runtime type "kata" for runtime "kata": '
        'expected a dotted name ending in a version, such as "io.containerd.runc.v2"',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\nSystemdCgroup = "true"',
        'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options.SystemdCgroup: '
        'expected a boolean, got string "true"',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri".containerd]\ndefault_runtime_name = "kata"',
        'plugins."io.containerd.grpc.v1.cri".containerd.default_runtime_name: '
        'runtime "kata" is not configured in containerd.runtimes (configured: "runc", "wharf")',
    ),
    (
        '[plugins."io.containerd.grpc.v1.cri".x509_key_pair_streaming]\ntls_cert_file = "/etc/w/tls.crt"',
        'plugins."io.containerd.grpc.v1.cri".x509_key_pair_streaming.tls_cert_file: '
        "tls_key_file must be set too (or neither, for a self-signed pair)",
    ),
    (
        '[plugins."io.containerd.gc.v1.scheduler"]\npause_threshold = 0.9',
        'plugins."io.containerd.gc.v1.scheduler".pause_threshold: must be between 0 and 0.5, got 0.9',
    ),
    (
        '[plugins."io.containerd.differ.v1.walking"]\nunpack_workers = -1',
        'plugins."io.containerd.differ.v1.walking".unpack_workers: must be between 0 and 1024, got -1',
    ),
    (
        '[plugins."io.containerd.differ.v1.walking"]\nworker_cpu_shares = 300000',
        'plugins."io.containerd.differ.v1.walking".worker_cpu_shares: must be between 0 and 262144, got 300000',
    ),
    (
        '[plugins."io.containerd.gc.v1.scheduler"]\nstartup_delay = 100',
        'plugins."io.containerd.gc.v1.scheduler".startup_delay: expected a string, got integer 100',
    ),
    (
        '[plugins."io.containerd.runtime.v2.task"]\nplatforms = ["amd64"]',
        'plugins."io.containerd.runtime.v2.task".platforms: invalid platform "amd64": '
        'expected "os/arch" or "os/arch/variant"',
    ),
    (
        '[plugins."io.containerd.metadata.v1.bolt"]\ncontent_sharing_policy = "private"',
        'plugins."io.containerd.metadata.v1.bolt".content_sharing_policy: '
        'must be one of "shared", "isolated"; got "private"',
    ),
    ('[plugins]\n"example.plugin" = 3', 'plugins."example.plugin": expected a table, got integer 3'),
    ('version = "2"', 'version: expected an integer, got string "2"'),
]


@pytest.mark.parametrize(("body", "expected"), ERRORS, ids=[e[1].split(":")[0] for e in ERRORS])
def test_validation_errors_name_file_key_and_problem(tmp_path: Path, body: str, expected: str) -> None:
    text = body if body.startswith("version") else "version = 2\n" + body
    assert error_of(tmp_path, text) == expected


def test_not_toml_reports_line_and_column(tmp_path: Path) -> None:
    problem = error_of(tmp_path, "version = 2\n[grpc]\naddress = /run/x.sock\n")
    assert problem.startswith("not valid TOML: ")
    assert "line 3" in problem and "column" in problem


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'root = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(str(path))


def test_an_explicit_path_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"
    with pytest.raises(ConfigError, match="cannot read config file: Is a directory"):
        config.load(str(tmp_path))


def test_a_missing_explicit_import_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", 'version = 2\nimports = ["conf.d/*.toml", "gone.toml"]\n')
    with pytest.raises(ConfigError) as info:
        config.load(main)
    gone = tmp_path / "gone.toml"
    assert (
        str(info.value)
        == f'{main}: imports[1]: cannot read imported file "{gone}": No such file or directory'
    )


def test_errors_in_an_imported_file_name_that_file(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", 'version = 2\nimports = ["conf.d/*.toml"]\n')
    bad = write(tmp_path / "conf.d/bad.toml", "[grpc]\nuid = -4\n")
    with pytest.raises(ConfigError) as info:
        config.load(main)
    assert str(info.value) == f"{bad}: grpc.uid: must be between 0 and 4294967294, got -4"


def test_default_runtime_error_names_the_file_that_set_it(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", 'version = 2\nimports = ["d.toml"]\n')
    dropin = write(
        tmp_path / "d.toml", '[plugins."io.containerd.grpc.v1.cri".containerd]\ndefault_runtime_name = "x"\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load(main)
    assert str(info.value).startswith(
        f'{dropin}: plugins."io.containerd.grpc.v1.cri".containerd.default_runtime_name:'
    )


def test_config_error_without_a_file() -> None:
    assert str(ConfigError("bad", "grpc.uid")) == "grpc.uid: bad"
    assert str(ConfigError("bad")) == "bad"
    error = ConfigError("two\nlines", "k", "f.toml")
    assert str(error) == "f.toml: k: two lines" and error.file == "f.toml" and error.key == "k"


# ---- warnings


def test_unknown_keys_are_warnings(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.toml",
        """
version = 2
colour = "blue"
[grpc]
adress = "/run/typo.sock"
[plugins."io.containerd.grpc.v1.cri"]
systemd_cgroup = true
sandbox_imag = "typo"
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
endpoint = ["https://mirror.example"]
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
SystemdCgroups = true
[plugins."io.containerd.nri.v1.nri"]
disable = true
[timeouts]
"io.containerd.timeout.bolt.open" = "0s"
""",
    )
    cfg = config.load(path)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    assert cfg.warnings == [
        f"{path}: colour: unknown key (ignored)",
        f"{path}: grpc.adress: unknown key (ignored)",
        f"{path}: {cri}.systemd_cgroup: no longer supported; set SystemdCgroup = true in "
        "containerd.runtimes.<name>.options (ignored)",
        f"{path}: {cri}.sandbox_imag: unknown key (ignored)",
        f"{path}: {cri}.registry.mirrors: no longer supported; "
        "use config_path with a hosts.toml per registry (ignored)",
        f"{path}: {cri}.containerd.runtimes.runc.options.SystemdCgroups: unknown runc option (ignored)",
        f'{path}: plugins."io.containerd.nri.v1.nri": unknown plugin (kept)',
        f'{path}: timeouts."io.containerd.timeout.bolt.open": unknown timeout (kept)',
    ]
    assert cfg.grpc.address == "/run/wharfd/wharfd.sock"
    assert cfg.plugin("io.containerd.nri.v1.nri") == {"disable": True}
    assert "sandbox_imag" not in cfg.plugin(CRI)
    assert cfg.timeouts["io.containerd.timeout.bolt.open"] == 0.0


# ---- versions


def test_missing_version_is_read_as_2_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", 'root = "/srv/w"\n')
    cfg = config.load(path)
    assert cfg.root == "/srv/w" and cfg.version == 2
    assert cfg.warnings == [f"{path}: version: missing; read as version 2 (add `version = 2`)"]


def test_version_1_plugin_names_are_migrated(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.toml",
        """
version = 1
disabled_plugins = ["otlp"]
[plugins.cri]
sandbox_image = "old/pause:3"
[plugins.scheduler]
pause_threshold = "high"
""",
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    # The error names the key as the file wrote it.
    assert (
        str(info.value) == f'{path}: plugins.scheduler.pause_threshold: expected a number, got string "high"'
    )
    write(
        tmp_path / "config.toml",
        'version = 1\ndisabled_plugins = ["otlp"]\n[plugins.cri]\nsandbox_image = "p:3"\n',
    )
    cfg = config.load(path)
    assert cfg.plugin(CRI)["sandbox_image"] == "p:3"
    assert cfg.disabled_plugins == ["io.containerd.tracing.processor.v1.otlp"]
    assert cfg.warnings == [
        f"{path}: version: version 1 config read as version 2",
        f'{path}: plugins.cri: version 1 plugin name; read as "io.containerd.grpc.v1.cri"',
    ]


V3 = """
version = 3
root = "/var/lib/w3"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  discard_unpacked_layers = true
  max_concurrent_downloads = 6
  image_pull_progress_timeout = "2m"
  stats_collect_period = 20
  use_local_image_pull = true
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.9"
    other = "example/other:1"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "/etc/containerd/certs.d"
  [plugins."io.containerd.cri.v1.images".image_decryption]
    key_model = "node"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = true
  max_container_log_line_size = -1
  stats_collect_period = "1s"
  cdi_spec_dirs = ["/etc/cdi"]
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "crun"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      sandboxer = "podsandbox"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.crun.options]
        BinaryName = "crun"
        SystemdCgroup = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
    conf_dir = "/etc/cni/other.d"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "0.0.0.0"
  stream_idle_timeout = "30m"

[plugins."io.containerd.shim.v1.manager"]
  env = ["SCHED_CORE=1"]

[plugins."io.containerd.monitor.task.v1.cgroups"]
  no_prometheus = true
"""


def test_version_3_is_converted(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", V3)
    cfg = config.load(path)
    cri = cfg.plugin(CRI)
    assert cfg.root == "/var/lib/w3"
    assert cri["containerd"]["snapshotter"] == "native"
    assert cri["containerd"]["discard_unpacked_layers"] is True
    assert cri["containerd"]["disable_snapshot_annotations"] is True
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.9"
    assert cri["max_concurrent_downloads"] == 6
    assert cri["image_pull_progress_timeout"] == "2m"
    assert cri["stats_collect_period"] == 20
    assert cri["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert cri["enable_selinux"] is True and cri["max_container_log_line_size"] == -1
    assert cri["cdi_spec_dirs"] == ["/etc/cdi"]
    assert cri["containerd"]["default_runtime_name"] == "crun"
    crun = cri["containerd"]["runtimes"]["crun"]
    assert crun["sandbox_mode"] == "podsandbox"
    assert crun["options"]["BinaryName"] == "crun" and crun["options"]["SystemdCgroup"] is True
    assert cri["cni"]["bin_dir"] == "/opt/cni/bin" and cri["cni"]["conf_dir"] == "/etc/cni/other.d"
    assert cri["stream_server_address"] == "0.0.0.0"
    assert cfg.duration(CRI, "stream_idle_timeout") == 1800.0
    assert cfg.plugin("io.containerd.runtime.v2.task")["sched_core"] is True
    assert cfg.plugin("io.containerd.monitor.v1.cgroups")["no_prometheus"] is True
    assert "io.containerd.cri.v1.images" not in cfg.plugins
    images, runtime = 'plugins."io.containerd.cri.v1.images"', 'plugins."io.containerd.cri.v1.runtime"'
    assert cfg.warnings == [
        f"{path}: {images}.pinned_images.other: no version 2 equivalent (ignored)",
        f"{path}: {runtime}.stats_collect_period: no version 2 equivalent (ignored)",
        f'{path}: {runtime}.cni.bin_dirs: version 2 has one bin_dir; only "/opt/cni/bin" is used',
        f"{path}: version: version 3 config converted; `wharfd config dump` prints the version 2 form",
        f"{path}: {images}.use_local_image_pull: unknown key (ignored)",
    ]
    # The dump is a version 2 file that reads back to the same config.
    dumped = config.dumps(cfg.to_tree())
    assert tomllib.loads(dumped)["version"] == 2
    again = config.load(write(tmp_path / "v2.toml", dumped))
    assert again.to_tree() == cfg.to_tree() and again.warnings == []


def test_version_3_errors_name_the_key_as_written(tmp_path: Path) -> None:
    runtime = 'plugins."io.containerd.cri.v1.runtime"'
    text = f'version = 3\n[{runtime}.containerd.runtimes.runc]\nruntime_type = "runc"\n'
    assert error_of(tmp_path, text).startswith(
        f'{runtime}.containerd.runtimes.runc.runtime_type: unknown runtime type "runc"'
    )
    text = 'version = 3\n[plugins."io.containerd.cri.v1.images".pinned_images]\nsandbox = 3\n'
    assert error_of(tmp_path, text) == (
        'plugins."io.containerd.cri.v1.images".pinned_images.sandbox: expected a string, got integer 3'
    )
    text = f'version = 3\n[{runtime}.cni]\nbin_dirs = "/opt/cni/bin"\n'
    assert error_of(tmp_path, text) == (
        f'{runtime}.cni.bin_dirs: expected an array of strings, got string "/opt/cni/bin"'
    )


def test_versionless_drop_ins_follow_the_main_file(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", 'version = 3\nimports = ["d.toml", "e.toml"]\n')
    dropin = write(tmp_path / "d.toml", '[plugins."io.containerd.cri.v1.images"]\nsnapshotter = "native"\n')
    # Version 2 style keys in a versionless drop-in still land (the CRI section is shared by both layouts).
    write(tmp_path / "e.toml", f"[{CRI_KEY}.containerd.runtimes.runc.options]\nSystemdCgroup = true\n")
    cfg = config.load(main)
    assert cfg.plugin(CRI)["containerd"]["snapshotter"] == "native"
    assert cfg.plugin(CRI)["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert len(cfg.warnings) == 2  # main and d.toml were converted; e.toml had nothing to convert
    assert (
        f"{dropin}: version: version 3 config converted; `wharfd config dump` prints the version 2 form"
        in (cfg.warnings)
    )


def test_an_import_may_not_have_a_higher_version(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", 'version = 2\nimports = ["d.toml"]\n')
    dropin = write(tmp_path / "d.toml", "version = 3\n")
    with pytest.raises(ConfigError) as info:
        config.load(main)
    assert str(info.value) == f"{dropin}: version: version 3 is higher than the main file's version 2"


@pytest.mark.parametrize("version", [0, 4, 5, -1])
def test_unsupported_versions_are_refused(tmp_path: Path, version: int) -> None:
    assert error_of(tmp_path, f"version = {version}\n") == (
        f"version: unsupported config version {version}: wharfd reads version 2 (and converts 3); "
        "convert the file with `wharfd config default` as a template"
    )


# ---- durations

DURATIONS = [
    ("0", 0.0),
    ("0s", 0.0),
    ("5s", 5.0),
    ("5m0s", 300.0),
    ("1h", 3600.0),
    ("4h0m0s", 14400.0),
    ("1h30m", 5400.0),
    ("300ms", 0.3),
    ("1.5s", 1.5),
    (".5s", 0.5),
    ("1.s", 1.0),
    ("100us", 0.0001),
    ("100\u00b5s", 0.0001),
    ("100\u03bcs", 0.0001),
    ("250ns", 2.5e-7),
    ("1.0000000001s", 1.0),  # below a nanosecond is dropped, as in Go
    ("+2s", 2.0),
    ("-1m", -60.0),
    ("2h45m10.5s", 9910.5),
]


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_parse_duration(text: str, seconds: float) -> None:
    assert config.parse_duration(text, "k") == pytest.approx(seconds, abs=1e-12)


BAD_DURATIONS = [
    ("", "empty"),
    ("5", "missing unit (ns, us, ms, s, m or h)"),
    ("5 minutes", 'unknown unit " minutes"'),
    ("5x", 'unknown unit "x"'),
    ("1d", 'unknown unit "d"'),
    (".s", "expected a number"),
    ("s", "expected a number"),
    ("-", "empty"),
    ("1h-5m", 'unknown unit "h-"'),  # as Go reads it
    ("3000000h", "out of range"),
]


@pytest.mark.parametrize(("text", "why"), BAD_DURATIONS)
def test_parse_duration_rejects(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse_duration(text, "plugins.x.delay")
    hint = 'use Go syntax such as "300ms", "1.5s", "5m0s" or "1h"'
    assert str(info.value) == f'plugins.x.delay: invalid duration "{text}": {why}; {hint}'


FORMATS = [
    (0.0, "0s"),
    (5.0, "5s"),
    (10.0, "10s"),
    (300.0, "5m0s"),
    (61.0, "1m1s"),
    (3600.0, "1h0m0s"),
    (14400.0, "4h0m0s"),
    (9910.5, "2h45m10.5s"),
    (0.1, "100ms"),
    (0.3, "300ms"),
    (1.5, "1.5s"),
    (0.0015, "1.5ms"),
    (0.0001, "100\u00b5s"),
    (2.5e-7, "250ns"),
    (1e-9, "1ns"),
    (-90.0, "-1m30s"),
    (100000 * 3600.0, "100000h0m0s"),
]


@pytest.mark.parametrize(("seconds", "text"), FORMATS)
def test_format_duration(seconds: float, text: str) -> None:
    assert config.format_duration(seconds) == text
    assert config.parse_duration(text, "k") == pytest.approx(seconds, abs=1e-12)
