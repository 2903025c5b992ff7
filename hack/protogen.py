"""Regenerate the Python modules under api/ from the .proto files beside them.

    python hack/protogen.py          # rewrite the generated files
    python hack/protogen.py --check  # exit 1 and list what regeneration would change

The .proto files import each other as ``wharfd/api/<path>``, so the generated
modules import each other as ``wharfd.api.<path>`` and never as a bare ``api``.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "api"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = ""


def _include_dirs() -> list[str]:
    import grpc_tools

    dirs = [str(Path(grpc_tools.__file__).parent / "_proto")]
    # googleapis-common-protos ships google/rpc/status.proto next to its modules.
    import google.rpc.status_pb2 as status

    dirs.append(str(Path(status.__file__).parent.parent.parent))
    return dirs


def generate(out: Path) -> None:
    """Run protoc over every .proto under api/, writing the modules below ``out``."""
    protos = sorted(p.relative_to(API).as_posix() for p in API.rglob("*.proto"))
    if not protos:
        return
    virtual = [f"wharfd/api/{p}" for p in protos]
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-Iwharfd/api={API}",
        *[f"-I{d}" for d in _include_dirs()],
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *virtual,
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    gen_root = out / "wharfd" / "api"
    for grpc_file in gen_root.rglob("*_pb2_grpc.py"):
        # protoc writes a _pb2_grpc module for every file; keep only those with services.
        if "def add_" not in grpc_file.read_text():
            grpc_file.unlink()
    for directory in [d for d in gen_root.rglob("*") if d.is_dir()]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text(INIT_TEXT)


def _generated_files(base: Path) -> set[str]:
    found = {p.relative_to(base).as_posix() for p in base.rglob("*") if p.name.endswith(GENERATED_SUFFIXES)}
    found |= {p.relative_to(base).as_posix() for p in base.rglob("__init__.py") if p.parent != base}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh_root = out / "wharfd" / "api"
        fresh = _generated_files(fresh_root) if fresh_root.exists() else set()
        current = _generated_files(API)
        stale = sorted(current - fresh)
        changed = sorted(
            f for f in fresh if f not in current or not filecmp.cmp(fresh_root / f, API / f, shallow=False)
        )
        if args.check:
            for f in changed:
                print(f"would regenerate api/{f}")
            for f in stale:
                print(f"would remove api/{f}")
            return 1 if changed or stale else 0
        for f in changed:
            (API / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh_root / f, API / f)
        for f in stale:
            (API / f).unlink()
        print(f"{len(changed)} written, {len(stale)} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
