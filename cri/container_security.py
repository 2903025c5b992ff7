"""The security parts of a CRI container's spec: user and groups, AppArmor, seccomp.

User: ``run_as_username``, else ``run_as_user`` (with ``run_as_group``), else
the image's USER, resolved in the image's /etc/passwd and /etc/group. With
SupplementalGroupsPolicy Merge the groups listing the user in the image join
the config's supplemental groups; with Strict only the config's count.

AppArmor: this host has none, so RuntimeDefault and Unconfined change nothing
and a Localhost profile is refused with a clear error; where AppArmor is
enabled a Localhost profile is applied (a default profile is not loaded).

Seccomp: the ``seccomp`` field, else the deprecated path form, else the
config's ``unset_seccomp_profile``; nothing at all means unconfined, as in
containerd. Privileged containers get none.
"""

from __future__ import annotations

import json

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.runtime import errors
from wharfd.runtime.oci import linux, process, seccomp, users
from wharfd.runtime.oci.spec import Spec, SpecOpt, process_of

MAX_SECCOMP_PROFILE = 1 << 20


def user_string(security: cri.LinuxContainerSecurityContext) -> str:
    """containerd's GenerateUserString: ``user[:group]`` from run_as_username / run_as_user / run_as_group."""
    user = security.run_as_username or (
        str(security.run_as_user.value) if security.HasField("run_as_user") else ""
    )
    group = str(security.run_as_group.value) if security.HasField("run_as_group") else ""
    if not user and group:
        raise errors.InvalidArgument(
            f'linux.security_context.run_as_group "{group}": specified without a user'
        )
    return f"{user}:{group}" if group else user


def with_cri_user(
    security: cri.LinuxContainerSecurityContext, image_user: str, rootfs: str, image_name: str
) -> SpecOpt:
    """The user (CRI's, else the image's) resolved in ``rootfs``, with the groups its policy gives."""
    userstr = user_string(security) or image_user
    policy = security.supplemental_groups_policy
    if policy not in (cri.Merge, cri.Strict):
        raise errors.InvalidArgument(f"linux.security_context.supplemental_groups_policy {policy}: unknown")
    extra = list(security.supplemental_groups)

    def opt(spec: Spec) -> None:
        # Without the image's files to look in, only numeric ids can be used.
        found = users.resolve(userstr, rootfs, image=image_name) if rootfs else _numeric_user(userstr)
        groups = {found.gid, *extra}
        if policy == cri.Merge:
            groups |= set(found.additional_gids)
        process.with_user(found.uid, found.gid, sorted(groups))(spec)

    return opt


def _numeric_user(userstr: str) -> users.User:
    uid, _, gid = userstr.partition(":")
    try:
        return users.User(int(uid or 0), int(gid or 0), ())
    except ValueError:
        raise errors.InvalidArgument(f'user "{userstr}": names need the image\'s /etc/passwd') from None


def _profile_from_path(path: str, what: str) -> cri.SecurityProfile | None:
    """A profile from the deprecated path form (``runtime/default``, ``unconfined``, ``localhost/<ref>``)."""
    if not path:
        return None
    if path in ("runtime/default", "docker/default"):
        return cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault)
    if path == "unconfined":
        return cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined)
    if path.startswith("localhost/"):
        ref = path.removeprefix("localhost/")
        return cri.SecurityProfile(profile_type=cri.SecurityProfile.Localhost, localhost_ref=ref)
    raise errors.InvalidArgument(f'{what} "{path}": unknown profile')


def apparmor_opts(security: cri.LinuxContainerSecurityContext, enabled: bool) -> list[SpecOpt]:
    """The AppArmor profile: only Localhost profiles are applied, and only where AppArmor is enabled."""
    what = "linux.security_context.apparmor"
    profile = (
        security.apparmor
        if security.HasField("apparmor")
        else _profile_from_path(security.apparmor_profile, what)
    )
    if security.privileged or profile is None or profile.profile_type != cri.SecurityProfile.Localhost:
        # RuntimeDefault needs a loaded default profile; without AppArmor (this host) it means nothing.
        return []
    if not enabled:
        raise errors.InvalidArgument(
            f'{what}: localhost profile "{profile.localhost_ref}" requested but AppArmor is not enabled on this host'
        )
    ref = profile.localhost_ref

    def opt(spec: Spec) -> None:
        process_of(spec)["apparmorProfile"] = ref

    return [opt]


def seccomp_opts(security: cri.LinuxContainerSecurityContext, unset_profile: str) -> list[SpecOpt]:
    """The seccomp profile: RuntimeDefault (after the capabilities), Localhost (a JSON file) or none."""
    what = "linux.security_context.seccomp"
    if security.privileged:
        return []
    if security.HasField("seccomp"):
        profile: cri.SecurityProfile | None = security.seccomp
    else:
        profile = _profile_from_path(security.seccomp_profile_path or unset_profile, what)
    if profile is None or profile.profile_type == cri.SecurityProfile.Unconfined:
        return []
    if profile.profile_type != cri.SecurityProfile.Localhost and profile.localhost_ref:
        raise errors.InvalidArgument(f"{what}: localhost_ref is only for a Localhost profile")
    if profile.profile_type == cri.SecurityProfile.RuntimeDefault:
        return [seccomp.with_default_profile()]
    return [linux.with_seccomp(load_seccomp_profile(profile.localhost_ref, what))]


def load_seccomp_profile(path: str, what: str) -> dict[str, object]:
    """A Localhost seccomp profile: the JSON file at absolute ``path`` (blocking)."""
    if not path.startswith("/"):
        raise errors.InvalidArgument(f'{what}: localhost profile "{path}" must be an absolute path')
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECCOMP_PROFILE + 1)
    except OSError as exc:
        raise errors.InvalidArgument(f'{what}: localhost profile "{path}": {exc.strerror or exc}') from exc
    if len(data) > MAX_SECCOMP_PROFILE:
        raise errors.InvalidArgument(f'{what}: localhost profile "{path}" is larger than 1 MiB')
    try:
        profile = json.loads(data)
    except ValueError as exc:
        raise errors.InvalidArgument(f'{what}: localhost profile "{path}": not JSON: {exc}') from exc
    if not isinstance(profile, dict) or not isinstance(profile.get("defaultAction"), str):
        raise errors.InvalidArgument(f'{what}: localhost profile "{path}": defaultAction missing')
    return profile
