"""The image store as an endpoint of a transfer: which records a pull, import or tag creates.

A transfer's ``ImageStore`` names what to record. For a pull or a tag that is
simply ``name``. An imported archive names its images itself, in annotations
of ``index.json`` (``io.containerd.image.name``, a full reference, or
``org.opencontainers.image.ref.name``, often just a tag), and the caller says
how to read them through *prefix* references, as containerd's importer does:

* ``Reference(prefix, is_prefix=True)``: a bare tag ``t`` becomes ``prefix:t``;
  a full name is kept only if it lies under ``prefix``;
* with ``allow_overwrite`` a full name is kept whatever its prefix (``ctr
  import`` without ``--base-name`` uses ``import-<date>`` this way);
* ``add_digest`` also records ``prefix@<manifest digest>``, and, with
  ``skip_named_digest``, only when no name was found.

Names that are not prefixes are recorded as given (and are the images an
export reads). Records are created, or updated to the new target when the
name exists. Labels containerd puts on extra references for its own
back-reference collection (``gc.bref``) are not written: our collector does
not know them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from wharfd.runtime import errors
from wharfd.runtime.images.platforms import Platform
from wharfd.runtime.metadata.images import Descriptor, Image, ImageStore

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# Put on index entries by an import, so that names come from the annotations.
ANNOTATION_REF_SOURCE = "io.containerd.import.ref-source"


@dataclass(frozen=True)
class Reference:
    """A name to record or look up, or a prefix to read archive names with (see the module docstring)."""

    name: str
    is_prefix: bool = False
    allow_overwrite: bool = False
    add_digest: bool = False
    skip_named_digest: bool = False


@dataclass(frozen=True)
class Unpack:
    """Unpack the image for ``platform`` into ``snapshotter`` ("" for the default)."""

    platform: Platform | None
    snapshotter: str = ""


@dataclass(frozen=True)
class Destination:
    """containerd's ``transfer.ImageStore``: names, labels, platform filter and unpacks."""

    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    platforms: tuple[Platform, ...] = ()
    all_metadata: bool = False
    manifest_limit: int = 0
    references: tuple[Reference, ...] = ()
    unpacks: tuple[Unpack, ...] = ()

    def images_for(self, target: Descriptor) -> list[Image]:
        """The records to create for ``target`` (an import's index entry, or what a pull resolved)."""
        if ANNOTATION_REF_SOURCE in target.annotations:
            if target.annotations[ANNOTATION_REF_SOURCE] != "annotation":
                raise errors.InvalidArgument(
                    f"{ANNOTATION_REF_SOURCE}={target.annotations[ANNOTATION_REF_SOURCE]!r}: not supported"
                )
            clean = {k: v for k, v in target.annotations.items() if k != ANNOTATION_REF_SOURCE}
            stored = Descriptor(target.media_type, target.digest, target.size, clean)
            return [Image(n, stored, dict(self.labels)) for n in self._annotated_names(stored)]
        names = [self.name] if self.name else []
        for ref in self.references:
            if ref.is_prefix and not ref.add_digest:
                continue  # a prefix alone names nothing without annotations
            names.append(f"{ref.name}@{target.digest}" if ref.add_digest else ref.name)
        return [Image(n, target, dict(self.labels)) for n in names]

    def _annotated_names(self, target: Descriptor) -> list[str]:
        names: list[str] = []
        for ref in self.references:
            if not ref.is_prefix:
                continue
            name = name_from_annotations(target.annotations, ref.name, overwrite=ref.allow_overwrite)
            digest_name = f"{ref.name}@{target.digest}"
            if not name:
                if ref.add_digest:
                    names.append(digest_name)
                continue
            names.append(name)
            if ref.add_digest and not ref.skip_named_digest:
                names.append(digest_name)
        return names

    async def store(self, images: ImageStore, target: Descriptor) -> list[Image]:
        """Create (or point at ``target``) every record :meth:`images_for` names; NotFound if none."""
        wanted = self.images_for(target)
        if not wanted:
            raise errors.NotFound(f"no image name found for {target.digest}")
        return [await put(images, image) for image in wanted]

    async def lookup(self, images: ImageStore) -> list[Image]:
        """The images an export reads: ``name`` and every non-prefix reference."""
        found = [await images.get(self.name)] if self.name else []
        for ref in self.references:
            if ref.is_prefix:
                raise errors.NotImplemented(f'image reference "{ref.name}": prefix lookup is not supported')
            found.append(await images.get(ref.name))
        if not found:
            raise errors.InvalidArgument("image store: no image name given")
        return found


async def put(images: ImageStore, image: Image) -> Image:
    """Create the record, or replace target and labels of an existing one."""
    for _ in range(3):
        try:
            return await images.create(image)
        except errors.AlreadyExists:
            pass
        try:
            return await images.update(image)
        except errors.NotFound:
            continue  # removed between the two calls: create again
    raise errors.Conflict(f'image "{image.name}": changed concurrently while being stored')


def name_from_annotations(annotations: Mapping[str, str], prefix: str, *, overwrite: bool) -> str:
    """The image name an index entry's annotations give under ``prefix`` ("" when none fits)."""
    full = annotations.get(ANNOTATION_IMAGE_NAME, "")
    if full:
        # A full containerd name is used as is, or not at all.
        return full if translate(full, prefix, check_prefix=not overwrite) == full else ""
    short = annotations.get(ANNOTATION_REF_NAME, "")
    return translate(short, prefix, check_prefix=not overwrite) if short else ""


def translate(ref: str, prefix: str, *, check_prefix: bool) -> str:
    """A tag-only ``ref`` gets ``prefix:`` in front; a full one is kept (if under ``prefix`` when checking)."""
    if not prefix:
        return ""
    if any(c in ref for c in "/:@"):
        if check_prefix and not has_prefix(ref, prefix):
            return ""
        return ref
    return f"{prefix}:{ref}"


def has_prefix(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``prefix`` or continues it with ``/``, ``:`` or ``@`` (not ``prefix-x``)."""
    if not name.startswith(prefix):
        return False
    return len(name) == len(prefix) or name[len(prefix)] in "/:@"


def oci_ref_name(name: str) -> str:
    """The ``org.opencontainers.image.ref.name`` for a full image name: its tag, else the whole name."""
    slash = name.rfind("/")
    tail = name[slash + 1 :]
    colon = tail.find(":")
    at = tail.find("@")
    if colon >= 0 and (at < 0 or colon < at):
        return tail[colon + 1 :]
    return name


def annotate(desc: Descriptor, name: str) -> Descriptor:
    """``desc`` with the name annotations an export writes into ``index.json``."""
    annotations = {**desc.annotations, ANNOTATION_IMAGE_NAME: name, ANNOTATION_REF_NAME: oci_ref_name(name)}
    return Descriptor(desc.media_type, desc.digest, desc.size, annotations)


def references_from(names: Sequence[str]) -> tuple[Reference, ...]:
    """Plain (non-prefix) references for ``names``."""
    return tuple(Reference(n) for n in names)
