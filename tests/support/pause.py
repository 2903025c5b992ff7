"""A pause image for pod-sandbox tests: a tiny static C program, or busybox when there is no compiler.

The pause process is PID 1 of a pod: it sleeps, reaps children that get
re-parented to it, and exits 0 on SIGINT/SIGTERM (PID 1 gets no default
signal actions). Built with ``gcc -static`` once per test session; without gcc,
Debian's static busybox running ``sleep 2147483647`` stands in.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.images import BUSYBOX, File, Image, build_image, build_layer, directory, symlink
from wharfd.runtime.images import platforms

PAUSE_SOURCE = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
    struct sigaction term = {0}, child = {0};
    term.sa_handler = on_term;
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
    return 0;
}
"""

_cache: dict[str, bytes] = {}


def pause_binary() -> bytes | None:
    """The static pause program's bytes, or None if gcc cannot build one here."""
    if "pause" in _cache:
        return _cache["pause"]
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    with tempfile.TemporaryDirectory(prefix="wharfd-test-pause-") as tmp:
        src, out = Path(tmp) / "pause.c", Path(tmp) / "pause"
        src.write_text(PAUSE_SOURCE)
        result = subprocess.run(
            [gcc, "-static", "-Os", "-s", "-o", str(out), str(src)], capture_output=True, check=False
        )
        if result.returncode != 0:
            return None
        _cache["pause"] = out.read_bytes()
    return _cache["pause"]


def pause_image(
    user: str = "", *, passwd: bytes = b"root:x:0:0:root:/:/pause\n", group: bytes = b""
) -> Image:
    """A single-layer pause image for this host's platform (``/pause`` as its entrypoint).

    ``user`` is its config's User; ``passwd`` its ``/etc/passwd``; ``group``, if given, its ``/etc/group``.
    """
    binary = pause_binary()
    files: list[File] = [directory("etc"), File("etc/passwd", passwd)]
    if group:
        files.append(File("etc/group", group))
    if binary is not None:
        files.append(File("pause", binary, mode=0o755))
        entrypoint = ["/pause"]
    else:
        files += [directory("bin"), File("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)]
        files.append(symlink("bin/sleep", "busybox"))
        entrypoint = ["/bin/sleep", "2147483647"]
    return build_image(
        [build_layer(files)], platform=platforms.host(), cmd=None, entrypoint=entrypoint, env=(), user=user
    )
