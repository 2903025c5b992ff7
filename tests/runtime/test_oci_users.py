"""passwd/group parsing, reading them safely inside a rootfs, and USER resolution with containerd's rules."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from wharfd.runtime import errors
from wharfd.runtime.oci import users
from wharfd.runtime.oci.users import GroupEntry, PasswdEntry, User

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

app:x:1000:1000:App:/home/app:/bin/sh
broken:x:notanumber:0::/:/bin/sh
short:x:7
twin:x:1000:1234::/:/bin/sh
"""
GROUP = """\
root:x:0:
wheel:x:10:root,app
app:x:1000:app
staff:x:50:app,other
video:x:44:
junk:x:nope:app
"""


def rootfs(tmp_path: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return root


def test_parse_passwd_skips_comments_blank_and_malformed_lines() -> None:
    entries = users.parse_passwd(PASSWD)
    assert [e.name for e in entries] == ["root", "daemon", "app", "twin"]
    assert entries[2] == PasswdEntry("app", 1000, 1000, "/home/app", "/bin/sh")
    assert users.parse_passwd("min:x:5:6") == [PasswdEntry("min", 5, 6)]


def test_parse_group_members() -> None:
    entries = users.parse_group(GROUP)
    assert entries[1] == GroupEntry("wheel", 10, ("root", "app"))
    assert entries[0] == GroupEntry("root", 0, ())
    assert "junk" not in [e.name for e in entries]


@pytest.mark.parametrize(
    ("userstr", "expected"),
    [
        ("", User(0, 0, (0, 10))),  # no USER: root with root's supplementary groups
        ("0", User(0, 0, (0, 10))),
        ("app", User(1000, 1000, (1000, 10, 50))),  # own group "app" is not supplementary
        ("1000", User(1000, 1000, (1000, 10, 50))),
        ("4321", User(4321, 0, (0,))),  # unknown uid: gid 0, as containerd
        ("app:staff", User(1000, 50, (10, 50))),  # primary already listed: order kept, as containerd
        ("app:44", User(1000, 44, (44, 10, 50))),
        ("1000:video", User(1000, 44, (44, 10, 50))),
        ("1:1", User(1, 1, (1,))),
        ("daemon", User(1, 1, (1,))),
    ],
)
def test_resolve(tmp_path: Path, userstr: str, expected: User) -> None:
    assert users.resolve(userstr, rootfs(tmp_path), image="docker.io/library/app:1") == expected


def test_numeric_user_needs_no_files(tmp_path: Path) -> None:
    root = rootfs(tmp_path, passwd=None, group=None)
    assert users.resolve("1234", root) == User(1234, 0, (0,))
    assert users.resolve("5:6", root) == User(5, 6, (6,))


@pytest.mark.parametrize(
    ("userstr", "passwd", "group", "match"),
    [
        (
            "ghost",
            PASSWD,
            GROUP,
            r'user "ghost" of image "example.com/img:1": no user "ghost" in /etc/passwd',
        ),
        ("ghost:staff", PASSWD, GROUP, r'no user "ghost"'),
        (
            "app:nogroup",
            PASSWD,
            GROUP,
            r'user "app:nogroup" of image "example.com/img:1": no group "nogroup"',
        ),
        ("app", None, GROUP, r'user "app" of image "example.com/img:1": the image has no /etc/passwd'),
        ("1:staff", PASSWD, None, r"the image has no /etc/group"),
        ("a:b:c", PASSWD, GROUP, r'user "a:b:c": expected name, uid, name:group'),
        (":5", PASSWD, GROUP, r"expected name, uid"),
        ("-1", PASSWD, GROUP, r"uid out of range"),
        ("0:2147483648", PASSWD, GROUP, r"gid out of range"),
    ],
)
def test_resolve_errors_name_the_user_and_image(
    tmp_path: Path, userstr: str, passwd: str | None, group: str | None, match: str
) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        users.resolve(userstr, rootfs(tmp_path, passwd, group), image="example.com/img:1")


def test_missing_rootfs_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound, match="rootfs"):
        users.resolve("app", tmp_path / "nope")


# --- reading inside the rootfs ----------------------------------------------------------------------


def test_absolute_symlink_to_etc_shadow_is_read_inside_the_rootfs(tmp_path: Path) -> None:
    root = rootfs(tmp_path, passwd=None)
    (root / "etc" / "shadow").write_text("inside:x:4242:4242::/:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("/etc/shadow")
    assert users.resolve("inside", root) == User(4242, 4242, (4242,))
    with pytest.raises(errors.InvalidArgument, match='no user "root"'):
        users.resolve("root", root)  # the host's /etc/shadow (or passwd) was never read


def test_relative_symlink_climbing_out_stays_in_the_rootfs(tmp_path: Path) -> None:
    root = rootfs(tmp_path, passwd=None)
    (root / "lib").mkdir()
    (root / "lib" / "passwd").write_text("inroot:x:77:77::/:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("../" * 20 + "lib/passwd")  # on the host: /lib/passwd
    assert users.resolve("inroot", root).uid == 77


def test_symlink_to_itself_through_dotdot_is_a_loop_not_the_host_file(tmp_path: Path) -> None:
    root = rootfs(tmp_path, passwd=None)
    (root / "etc" / "passwd").symlink_to("../../../../../../../../etc/passwd")  # in root: itself
    with pytest.raises(errors.InvalidArgument, match=r"/etc/passwd.*cannot be read"):
        users.resolve("root", root, image="evil")
    with pytest.raises(OSError) as info:
        users.read_in_root(root, "/etc/passwd")
    assert info.value.errno == errno.ELOOP


def test_directory_symlinks_resolve_relative_to_where_the_link_is(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr" / "etc").mkdir(parents=True)
    (root / "usr" / "lib").mkdir()
    (root / "etc").symlink_to("/../usr/etc")
    (root / "usr" / "etc" / "passwd").symlink_to("../lib/passwd")  # usr/lib/passwd, not lib/passwd
    (root / "usr" / "lib" / "passwd").write_text("deep:x:9:9::/:/bin/sh\n")
    assert users.read_in_root(root, "/etc/passwd") == b"deep:x:9:9::/:/bin/sh\n"
    assert users.read_in_root(root, "etc/./../etc/passwd") == b"deep:x:9:9::/:/bin/sh\n"


def test_missing_file_is_none_and_non_regular_files_are_refused(tmp_path: Path) -> None:
    root = rootfs(tmp_path, passwd=None, group=None)
    assert users.read_in_root(root, "/etc/passwd") is None
    os.mkfifo(root / "etc" / "passwd")  # reading it would block forever
    with pytest.raises(errors.InvalidArgument, match="cannot be read: not a regular file"):
        users.resolve("app", root)
    (root / "etc" / "group").mkdir()
    with pytest.raises(OSError):
        users.read_in_root(root, "/etc/group")


def test_component_that_is_a_file_is_enotdir(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "etc").write_text("not a dir")
    with pytest.raises(errors.InvalidArgument, match="Not a directory"):
        users.resolve("app", root)


def test_size_limit(tmp_path: Path) -> None:
    root = rootfs(tmp_path)
    assert users.read_in_root(root, "/etc/passwd", limit=len(PASSWD)) == PASSWD.encode()
    with pytest.raises(OSError) as info:
        users.read_in_root(root, "/etc/passwd", limit=10)
    assert info.value.errno == errno.EFBIG


def test_symlink_chain_limit(tmp_path: Path) -> None:
    root = rootfs(tmp_path, passwd=None)
    for i in range(41):
        (root / f"l{i}").symlink_to(f"l{i + 1}")
    (root / "l41").write_text("end")
    with pytest.raises(OSError) as info:
        users.read_in_root(root, "l0")
    assert info.value.errno == errno.ELOOP
    assert users.read_in_root(root, "l2") == b"end"
