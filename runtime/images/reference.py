"""Image references: parsing, normalizing and displaying ``[domain/]path[:tag][@digest]``.

The grammar and the normalization follow the one Docker and the CRI use, so a
name kubelet sends resolves to the same repository here::

    busybox                     -> docker.io/library/busybox:latest
    user/repo                   -> docker.io/user/repo:latest
    localhost:5000/repo:1       -> localhost:5000/repo:1
    repo@sha256:<hex>           -> docker.io/library/repo@sha256:<hex>   (no tag added)
    repo:tag@sha256:<hex>       -> both kept; the digest is what gets pulled

The first path element is a domain when it contains ``.`` or ``:``, is
``localhost``, or has upper-case letters; otherwise the domain is ``docker.io``.
Repository paths are lower case; the whole name is at most 255 characters and a
tag at most 128.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from wharfd.runtime import errors

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX_LENGTH = 255
TAG_MAX_LENGTH = 128

_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"^(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_DIGEST = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
# Encoded lengths of the algorithms we can verify; others are refused up front.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}


def validate_digest(value: str, *, what: str = "digest") -> str:
    """Return ``value`` if it is a well-formed sha256/sha512 digest, else raise InvalidArgument."""
    match = _DIGEST.match(value)
    if not match:
        raise errors.InvalidArgument(f'{what} "{value}": not of the form <algorithm>:<hex>')
    algorithm, encoded = match.groups()
    length = _DIGEST_HEX_LENGTH.get(algorithm)
    if length is None:
        raise errors.InvalidArgument(f'{what} "{value}": unsupported digest algorithm "{algorithm}"')
    if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise errors.InvalidArgument(
            f'{what} "{value}": {algorithm} needs {length} lower-case hex characters'
        )
    return value


def is_digest(value: str) -> bool:
    """Whether ``value`` is a valid digest (no exception)."""
    try:
        validate_digest(value)
    except errors.InvalidArgument:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalized image reference. ``tag`` and ``digest`` may be empty."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository name with its domain: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to look up in the repository: the digest if there is one, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` (and no digest)."""
        if not _TAG.match(tag):
            raise errors.InvalidArgument(f'invalid tag "{tag}" for {self.name}')
        return replace(self, tag=tag, digest="")

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest`` (and no tag)."""
        return replace(self, tag="", digest=validate_digest(digest))

    def familiar(self) -> str:
        """The short form people type: ``busybox:latest``, ``user/repo``, ``host:5000/repo``."""
        return familiar_name(self.name) + str(self)[len(self.name) :]


def familiar_name(name: str) -> str:
    """Shorten a normalized repository name for display (drop docker.io and library/)."""
    prefix = DEFAULT_DOMAIN + "/"
    if not name.startswith(prefix):
        return name
    path = name[len(prefix) :]
    if path.startswith(OFFICIAL_REPO_PREFIX) and path.count("/") == 1:
        return path[len(OFFICIAL_REPO_PREFIX) :]
    return path


def parse(text: str) -> Reference:
    """Parse and normalize a reference; no default tag is added (see :func:`parse_normalized`)."""
    if not text:
        raise errors.InvalidArgument("invalid reference: empty string")
    if _HEX64.match(text):
        raise errors.InvalidArgument(
            f'invalid reference "{text}": a 64-character hex string is an image ID, not a repository name'
        )
    remainder, _, digest = text.partition("@")
    if digest:
        validate_digest(digest, what=f'reference "{text}" digest')
    elif text.endswith("@"):
        raise errors.InvalidArgument(f'invalid reference "{text}": empty digest after "@"')
    name, tag = _split_tag(text, remainder)
    domain, path = _split_domain(text, name)
    _check_path(text, path)
    full = f"{domain}/{path}"
    if len(full) > NAME_MAX_LENGTH:
        raise errors.InvalidArgument(
            f'invalid reference "{text}": repository name longer than {NAME_MAX_LENGTH} characters'
        )
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def parse_normalized(text: str) -> Reference:
    """Parse like :func:`parse` and add the ``latest`` tag when neither tag nor digest is given."""
    ref = parse(text)
    if not ref.tag and not ref.digest:
        ref = replace(ref, tag=DEFAULT_TAG)
    return ref


def _split_tag(text: str, remainder: str) -> tuple[str, str]:
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon <= slash:
        return remainder, ""
    name, tag = remainder[:colon], remainder[colon + 1 :]
    if len(tag) > TAG_MAX_LENGTH:
        raise errors.InvalidArgument(
            f'invalid reference "{text}": tag longer than {TAG_MAX_LENGTH} characters'
        )
    if not _TAG.match(tag):
        raise errors.InvalidArgument(
            f'invalid reference "{text}": tag "{tag}" may hold only letters, digits, "_", "." and "-" '
            'and must not start with "." or "-"'
        )
    return name, tag


def _split_domain(text: str, name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    is_domain = slash and ("." in first or ":" in first or first == "localhost" or first.lower() != first)
    if not is_domain:
        domain, path = DEFAULT_DOMAIN, name
    else:
        if not _DOMAIN.match(first):
            raise errors.InvalidArgument(f'invalid reference "{text}": invalid registry domain "{first}"')
        domain, path = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def _check_path(text: str, path: str) -> None:
    components = path.split("/")
    if all(_PATH_COMPONENT.match(c) for c in components):
        return
    if all(_PATH_COMPONENT.match(c.lower()) for c in components):
        raise errors.InvalidArgument(f'invalid reference "{text}": repository name must be lower case')
    raise errors.InvalidArgument(
        f'invalid reference "{text}": repository path "{path}" must be lower-case letters and digits, '
        'with single ".", "_", "__" or runs of "-" between them, separated by "/"'
    )
