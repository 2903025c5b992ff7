"""Showing a transfer's progress as ctr does: a tree of nodes redrawn in place, and a status line.

Records arrive from the server (``containerd.types.transfer.Progress``). A
record without a name sets the status line; a named one adds or updates a
node, attached under the parents already known (others are roots), exactly
as ctr's ``ProgressHandler`` builds its tree. On a terminal the whole tree is
redrawn at most every 100 ms (cursor up, clear line), in ctr's format::

    layer (0123456789ab)                     downloading|++++++----|  1.2 MiB/2.5 MiB
    application/vnd.oci.image.manifest.v1+json sha256:…
    Pulling from OCI Registry (…)	elapsed: 0.4 s	total:  1.2 Mi	(3.0 MiB/s)

Elsewhere (a pipe, a log) each state change and status is one plain line
(``layer (0123456789ab): complete``), and the final status line ("Completed
pull from …") ends the output, formatted as ctr prints it.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from wharfd.runtime.ctr.snapshots import bytes_size

GREEN, RESET = "\x1b[32m", "\x1b[0m"
CLEAR_LINE = "\x1b[1A\x1b[2K\r"
REDRAW_EVERY = 0.1
_BYTE_EVENTS = ("downloading", "uploading", "extracting")


@dataclass
class Node:
    """One named node: its latest record, and the nodes below it."""

    event: str
    name: str
    parents: list[str]
    progress: int = 0
    total: int = 0
    desc: tuple[str, str] | None = None  # (media type, digest)
    children: list[Node] = field(default_factory=list)
    root: bool = True

    def main_desc(self) -> tuple[str, str] | None:
        """This node's descriptor, else the first one found below it."""
        if self.desc is not None:
            return self.desc
        return next((d for c in self.children if (d := c.main_desc()) is not None), None)


def bar(fraction: float, width: int = 40) -> str:
    """ctr's progress bar: ``|`` + green ``+`` run + ``-`` run + ``|``."""
    fraction = min(max(fraction, 0.0), 1.0)
    inner = width - 2
    done = int(inner * fraction)
    return f"|{GREEN}{'+' * done}{RESET}{'-' * (inner - done)}|"


def display_name(name: str) -> str:
    """``layer-sha256:<64 hex>`` as ``layer (<12 hex>)``."""
    parts = name.split("-")
    return " ".join(f"({p[7:19]})" if p.startswith("sha256:") and len(p) == 71 else p for p in parts)


def status_line(status: str, elapsed: float, total: int) -> str:
    """ctr's last line: ``<status>\\telapsed: %-4.1fs\\ttotal: %7.6v\\t(%v/s)\\t``."""
    rate = int(total / elapsed) if elapsed > 0 else 0
    return f"{status}\telapsed: {elapsed:<4.1f}s\ttotal: {bytes_size(total)[:6]:>7}\t({bytes_size(rate)}/s)\t"


class Tree:
    """The nodes and status line of one transfer (ctr's algorithm for attaching parents)."""

    def __init__(self) -> None:
        self.status = ""
        self.nodes: dict[str, Node] = {}
        self.roots: list[Node] = []

    def update(self, msg: Any) -> Node | None:
        """Apply one Progress message; return the node it changed (None for a status line)."""
        if not msg.name:
            self.status = msg.event
            return None
        desc = (msg.desc.media_type, msg.desc.digest) if msg.HasField("desc") and msg.desc.digest else None
        node = self.nodes.get(msg.name)
        if node is None:
            node = Node(msg.event, msg.name, [], msg.progress, msg.total, desc)
            for parent in msg.parents:
                if parent in self.nodes:
                    node.parents.append(parent)
                    self.nodes[parent].children.append(node)
                    node.root = False
            if node.root:
                self.roots.append(node)
            self.nodes[msg.name] = node
            return node
        if len(node.parents) != len(msg.parents):
            self._reparent(node, list(msg.parents))
        node.event, node.progress, node.total = msg.event, msg.progress, msg.total
        node.desc = desc or node.desc
        return node

    def _reparent(self, node: Node, parents: list[str]) -> None:
        known = [p for p in parents if p in self.nodes]
        for parent in known:
            siblings = self.nodes[parent].children
            if all(c.name != node.name for c in siblings):
                siblings.append(node)
        if known and node.root:
            node.root = False
            self.roots = [r for r in self.roots if r is not node]
        node.parents = known

    def render(self, elapsed: float) -> tuple[str, int]:
        """The screen ctr draws, and the byte total it shows."""
        lines: list[str] = []
        total = self._nodes(lines, "", self.roots)
        for root in self.roots:
            if (desc := root.main_desc()) is not None:
                lines.append(f"{desc[0]} {desc[1]}")
        lines.append(status_line(self.status, elapsed, total))
        return "\n".join(lines) + "\n", total

    def _nodes(self, lines: list[str], prefix: str, nodes: list[Node]) -> int:
        total = 0
        for i, node in enumerate(nodes):
            total += node.progress
            last = i + 1 == len(nodes)
            branch, child_prefix = ("└──", "   ") if last else ("├──", "│  ")
            if node.root:
                branch, child_prefix = "", ""
            name = f"{prefix}{branch}{display_name(node.name)}"[:40]
            lines.append(_line(name, node))
            total += self._nodes(lines, prefix + child_prefix, node.children)
        return total


def _line(name: str, node: Node) -> str:
    if node.event in _BYTE_EVENTS:
        fraction = node.progress / node.total if node.total > 0 else 0.0
        sizes = f"{bytes_size(node.progress)[:8]:>8}/{bytes_size(node.total)}"
        return f"{name:<40}\t{node.event:<11}\t{bar(fraction)}\t{sizes}\t"
    if node.event in ("resolving", "waiting"):
        return f"{name:<40}\t{node.event:<11}\t{bar(0.0)}\t"
    if node.event in ("complete", "extracted"):
        return f"{name:<40}\t{node.event:<11}\t{bar(1.0)}\t"
    return f"{name:<40}\t{node.event}\t"


class Display:
    """Receives Progress messages (from a stream thread) and writes them to ``out``."""

    def __init__(self, out: IO[str], *, terminal: bool | None = None) -> None:
        self.out = out
        self.terminal = out.isatty() if terminal is None else terminal
        self.tree = Tree()
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._drawn_lines = 0
        self._last_draw = 0.0
        self._shown: dict[str, str] = {}

    def __call__(self, msg: Any) -> None:
        """Take one record."""
        with self._lock:
            node = self.tree.update(msg)
            if self.terminal:
                if time.monotonic() - self._last_draw >= REDRAW_EVERY:
                    self._draw()
            elif node is not None and self._shown.get(node.name) != node.event:
                self._shown[node.name] = node.event
                self.out.write(f"{display_name(node.name)}: {node.event}\n")
                self.out.flush()
            elif node is None and msg.event and not msg.event.startswith("Completed "):
                # The closing status ends the output instead, in ctr's format (see finish).
                self.out.write(f"{msg.event}\n")
                self.out.flush()

    def _draw(self) -> None:
        screen, _ = self.tree.render(time.monotonic() - self._start)
        self.out.write(CLEAR_LINE * self._drawn_lines + screen)
        self.out.flush()
        self._drawn_lines = _count_lines(screen)
        self._last_draw = time.monotonic()

    def finish(self) -> None:
        """Draw the final state: the whole tree on a terminal, else the status line."""
        with self._lock:
            if self.terminal:
                self._draw()
                return
            _, total = self.tree.render(0.0)
            self.out.write(status_line(self.tree.status, time.monotonic() - self._start, total) + "\n")
            self.out.flush()


def _count_lines(screen: str) -> int:
    """Terminal lines ``screen`` took, wrapped lines counted (colour codes take no room)."""
    width = shutil.get_terminal_size((0, 0)).columns
    lines = screen.split("\n")[:-1]
    if width <= 0:
        return len(lines)
    visible = [line.replace(GREEN, "").replace(RESET, "") for line in lines]
    return sum(max(len(v) - 1, 0) // width + 1 for v in visible)
