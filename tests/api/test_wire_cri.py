"""Wire-compatibility tests for api/cri/v1/api.proto (package runtime.v1).

The tables below are transcribed from the CRI v1 API of cri-api v0.36.3:
every field of every message, every enum value and every method of both
services. They are compared with the descriptors generated from our own
.proto, so a renamed, renumbered or retyped field fails here.
"""

from __future__ import annotations

import struct

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import Message

from tests.api.wire import EnumRow, FieldRow, MethodRow, check_enums, check_fields, check_methods
from wharfd.api.cri.v1 import api_pb2, api_pb2_grpc

PKG = "runtime.v1."


def _qualify(io: str) -> str:
    """Prefix the package to a method's message name, keeping a leading "stream "."""
    if io.startswith("stream "):
        return "stream " + PKG + io.removeprefix("stream ")
    return PKG + io


FIELDS: list[FieldRow] = [
    ("runtime.v1.VersionRequest", "version", 1, "string"),
    ("runtime.v1.VersionResponse", "version", 1, "string"),
    ("runtime.v1.VersionResponse", "runtime_name", 2, "string"),
    ("runtime.v1.VersionResponse", "runtime_version", 3, "string"),
    ("runtime.v1.VersionResponse", "runtime_api_version", 4, "string"),
    ("runtime.v1.DNSConfig", "servers", 1, "repeated string"),
    ("runtime.v1.DNSConfig", "searches", 2, "repeated string"),
    ("runtime.v1.DNSConfig", "options", 3, "repeated string"),
    ("runtime.v1.PortMapping", "protocol", 1, "runtime.v1.Protocol"),
    ("runtime.v1.PortMapping", "container_port", 2, "int32"),
    ("runtime.v1.PortMapping", "host_port", 3, "int32"),
    ("runtime.v1.PortMapping", "host_ip", 4, "string"),
    ("runtime.v1.Mount", "container_path", 1, "string"),
    ("runtime.v1.Mount", "host_path", 2, "string"),
    ("runtime.v1.Mount", "readonly", 3, "bool"),
    ("runtime.v1.Mount", "selinux_relabel", 4, "bool"),
    ("runtime.v1.Mount", "propagation", 5, "runtime.v1.MountPropagation"),
    ("runtime.v1.Mount", "uidMappings", 6, "repeated runtime.v1.IDMapping"),
    ("runtime.v1.Mount", "gidMappings", 7, "repeated runtime.v1.IDMapping"),
    ("runtime.v1.Mount", "recursive_read_only", 8, "bool"),
    ("runtime.v1.Mount", "image", 9, "runtime.v1.ImageSpec"),
    ("runtime.v1.Mount", "image_sub_path", 10, "string"),
    ("runtime.v1.IDMapping", "host_id", 1, "uint32"),
    ("runtime.v1.IDMapping", "container_id", 2, "uint32"),
    ("runtime.v1.IDMapping", "length", 3, "uint32"),
    ("runtime.v1.UserNamespace", "mode", 1, "runtime.v1.NamespaceMode"),
    ("runtime.v1.UserNamespace", "uids", 2, "repeated runtime.v1.IDMapping"),
    ("runtime.v1.UserNamespace", "gids", 3, "repeated runtime.v1.IDMapping"),
    ("runtime.v1.NamespaceOption", "network", 1, "runtime.v1.NamespaceMode"),
    ("runtime.v1.NamespaceOption", "pid", 2, "runtime.v1.NamespaceMode"),
    ("runtime.v1.NamespaceOption", "ipc", 3, "runtime.v1.NamespaceMode"),
    ("runtime.v1.NamespaceOption", "target_id", 4, "string"),
    ("runtime.v1.NamespaceOption", "userns_options", 5, "runtime.v1.UserNamespace"),
    ("runtime.v1.Int64Value", "value", 1, "int64"),
    ("runtime.v1.LinuxSandboxSecurityContext", "namespace_options", 1, "runtime.v1.NamespaceOption"),
    ("runtime.v1.LinuxSandboxSecurityContext", "selinux_options", 2, "runtime.v1.SELinuxOption"),
    ("runtime.v1.LinuxSandboxSecurityContext", "run_as_user", 3, "runtime.v1.Int64Value"),
    ("runtime.v1.LinuxSandboxSecurityContext", "run_as_group", 8, "runtime.v1.Int64Value"),
    ("runtime.v1.LinuxSandboxSecurityContext", "readonly_rootfs", 4, "bool"),
    ("runtime.v1.LinuxSandboxSecurityContext", "supplemental_groups", 5, "repeated int64"),
    (
        "runtime.v1.LinuxSandboxSecurityContext",
        "supplemental_groups_policy",
        11,
        "runtime.v1.SupplementalGroupsPolicy",
    ),
    ("runtime.v1.LinuxSandboxSecurityContext", "privileged", 6, "bool"),
    ("runtime.v1.LinuxSandboxSecurityContext", "seccomp", 9, "runtime.v1.SecurityProfile"),
    ("runtime.v1.LinuxSandboxSecurityContext", "apparmor", 10, "runtime.v1.SecurityProfile"),
    ("runtime.v1.LinuxSandboxSecurityContext", "seccomp_profile_path", 7, "string"),
    ("runtime.v1.SecurityProfile", "profile_type", 1, "runtime.v1.SecurityProfile.ProfileType"),
    ("runtime.v1.SecurityProfile", "localhost_ref", 2, "string"),
    ("runtime.v1.LinuxPodSandboxConfig", "cgroup_parent", 1, "string"),
    ("runtime.v1.LinuxPodSandboxConfig", "security_context", 2, "runtime.v1.LinuxSandboxSecurityContext"),
    ("runtime.v1.LinuxPodSandboxConfig", "sysctls", 3, "map<string, string>"),
    ("runtime.v1.LinuxPodSandboxConfig", "overhead", 4, "runtime.v1.LinuxContainerResources"),
    ("runtime.v1.LinuxPodSandboxConfig", "resources", 5, "runtime.v1.LinuxContainerResources"),
    ("runtime.v1.PodSandboxMetadata", "name", 1, "string"),
    ("runtime.v1.PodSandboxMetadata", "uid", 2, "string"),
    ("runtime.v1.PodSandboxMetadata", "namespace", 3, "string"),
    ("runtime.v1.PodSandboxMetadata", "attempt", 4, "uint32"),
    ("runtime.v1.PodSandboxConfig", "metadata", 1, "runtime.v1.PodSandboxMetadata"),
    ("runtime.v1.PodSandboxConfig", "hostname", 2, "string"),
    ("runtime.v1.PodSandboxConfig", "log_directory", 3, "string"),
    ("runtime.v1.PodSandboxConfig", "dns_config", 4, "runtime.v1.DNSConfig"),
    ("runtime.v1.PodSandboxConfig", "port_mappings", 5, "repeated runtime.v1.PortMapping"),
    ("runtime.v1.PodSandboxConfig", "labels", 6, "map<string, string>"),
    ("runtime.v1.PodSandboxConfig", "annotations", 7, "map<string, string>"),
    ("runtime.v1.PodSandboxConfig", "linux", 8, "runtime.v1.LinuxPodSandboxConfig"),
    ("runtime.v1.PodSandboxConfig", "windows", 9, "runtime.v1.WindowsPodSandboxConfig"),
    ("runtime.v1.RunPodSandboxRequest", "config", 1, "runtime.v1.PodSandboxConfig"),
    ("runtime.v1.RunPodSandboxRequest", "runtime_handler", 2, "string"),
    ("runtime.v1.RunPodSandboxResponse", "pod_sandbox_id", 1, "string"),
    ("runtime.v1.StopPodSandboxRequest", "pod_sandbox_id", 1, "string"),
    ("runtime.v1.RemovePodSandboxRequest", "pod_sandbox_id", 1, "string"),
    ("runtime.v1.PodSandboxStatusRequest", "pod_sandbox_id", 1, "string"),
    ("runtime.v1.PodSandboxStatusRequest", "verbose", 2, "bool"),
    ("runtime.v1.PodIP", "ip", 1, "string"),
    ("runtime.v1.PodSandboxNetworkStatus", "ip", 1, "string"),
    ("runtime.v1.PodSandboxNetworkStatus", "additional_ips", 2, "repeated runtime.v1.PodIP"),
    ("runtime.v1.Namespace", "options", 2, "runtime.v1.NamespaceOption"),
    ("runtime.v1.LinuxPodSandboxStatus", "namespaces", 1, "runtime.v1.Namespace"),
    ("runtime.v1.PodSandboxStatus", "id", 1, "string"),
    ("runtime.v1.PodSandboxStatus", "metadata", 2, "runtime.v1.PodSandboxMetadata"),
    ("runtime.v1.PodSandboxStatus", "state", 3, "runtime.v1.PodSandboxState"),
    ("runtime.v1.PodSandboxStatus", "created_at", 4, "int64"),
    ("runtime.v1.PodSandboxStatus", "network", 5, "runtime.v1.PodSandboxNetworkStatus"),
    ("runtime.v1.PodSandboxStatus", "linux", 6, "runtime.v1.LinuxPodSandboxStatus"),
    ("runtime.v1.PodSandboxStatus", "labels", 7, "map<string, string>"),
    ("runtime.v1.PodSandboxStatus", "annotations", 8, "map<string, string>"),
    ("runtime.v1.PodSandboxStatus", "runtime_handler", 9, "string"),
    ("runtime.v1.PodSandboxStatusResponse", "status", 1, "runtime.v1.PodSandboxStatus"),
    ("runtime.v1.PodSandboxStatusResponse", "info", 2, "map<string, string>"),
    ("runtime.v1.PodSandboxStatusResponse", "containers_statuses", 3, "repeated runtime.v1.ContainerStatus"),
    ("runtime.v1.PodSandboxStatusResponse", "timestamp", 4, "int64"),
    ("runtime.v1.PodSandboxStateValue", "state", 1, "runtime.v1.PodSandboxState"),
    ("runtime.v1.PodSandboxFilter", "id", 1, "string"),
    ("runtime.v1.PodSandboxFilter", "state", 2, "runtime.v1.PodSandboxStateValue"),
    ("runtime.v1.PodSandboxFilter", "label_selector", 3, "map<string, string>"),
    ("runtime.v1.ListPodSandboxRequest", "filter", 1, "runtime.v1.PodSandboxFilter"),
    ("runtime.v1.PodSandbox", "id", 1, "string"),
    ("runtime.v1.PodSandbox", "metadata", 2, "runtime.v1.PodSandboxMetadata"),
    ("runtime.v1.PodSandbox", "state", 3, "runtime.v1.PodSandboxState"),
    ("runtime.v1.PodSandbox", "created_at", 4, "int64"),
    ("runtime.v1.PodSandbox", "labels", 5, "map<string, string>"),
    ("runtime.v1.PodSandbox", "annotations", 6, "map<string, string>"),
    ("runtime.v1.PodSandbox", "runtime_handler", 7, "string"),
    ("runtime.v1.ListPodSandboxResponse", "items", 1, "repeated runtime.v1.PodSandbox"),
    ("runtime.v1.StreamPodSandboxesRequest", "filter", 1, "runtime.v1.PodSandboxFilter"),
    ("runtime.v1.StreamPodSandboxesResponse", "pod_sandboxes", 1, "repeated runtime.v1.PodSandbox"),
    ("runtime.v1.PodSandboxStatsRequest", "pod_sandbox_id", 1, "string"),
    ("runtime.v1.PodSandboxStatsResponse", "stats", 1, "runtime.v1.PodSandboxStats"),
    ("runtime.v1.PodSandboxStatsFilter", "id", 1, "string"),
    ("runtime.v1.PodSandboxStatsFilter", "label_selector", 2, "map<string, string>"),
    ("runtime.v1.ListPodSandboxStatsRequest", "filter", 1, "runtime.v1.PodSandboxStatsFilter"),
    ("runtime.v1.ListPodSandboxStatsResponse", "stats", 1, "repeated runtime.v1.PodSandboxStats"),
    ("runtime.v1.StreamPodSandboxStatsRequest", "filter", 1, "runtime.v1.PodSandboxStatsFilter"),
    (
        "runtime.v1.StreamPodSandboxStatsResponse",
        "pod_sandbox_stats",
        1,
        "repeated runtime.v1.PodSandboxStats",
    ),
    ("runtime.v1.PodSandboxAttributes", "id", 1, "string"),
    ("runtime.v1.PodSandboxAttributes", "metadata", 2, "runtime.v1.PodSandboxMetadata"),
    ("runtime.v1.PodSandboxAttributes", "labels", 3, "map<string, string>"),
    ("runtime.v1.PodSandboxAttributes", "annotations", 4, "map<string, string>"),
    ("runtime.v1.PodSandboxStats", "attributes", 1, "runtime.v1.PodSandboxAttributes"),
    ("runtime.v1.PodSandboxStats", "linux", 2, "runtime.v1.LinuxPodSandboxStats"),
    ("runtime.v1.PodSandboxStats", "windows", 3, "runtime.v1.WindowsPodSandboxStats"),
    ("runtime.v1.LinuxPodSandboxStats", "cpu", 1, "runtime.v1.CpuUsage"),
    ("runtime.v1.LinuxPodSandboxStats", "memory", 2, "runtime.v1.MemoryUsage"),
    ("runtime.v1.LinuxPodSandboxStats", "network", 3, "runtime.v1.NetworkUsage"),
    ("runtime.v1.LinuxPodSandboxStats", "process", 4, "runtime.v1.ProcessUsage"),
    ("runtime.v1.LinuxPodSandboxStats", "containers", 5, "repeated runtime.v1.ContainerStats"),
    ("runtime.v1.LinuxPodSandboxStats", "io", 6, "runtime.v1.IoUsage"),
    ("runtime.v1.WindowsPodSandboxStats", "cpu", 1, "runtime.v1.WindowsCpuUsage"),
    ("runtime.v1.WindowsPodSandboxStats", "memory", 2, "runtime.v1.WindowsMemoryUsage"),
    ("runtime.v1.WindowsPodSandboxStats", "network", 3, "runtime.v1.WindowsNetworkUsage"),
    ("runtime.v1.WindowsPodSandboxStats", "process", 4, "runtime.v1.WindowsProcessUsage"),
    ("runtime.v1.WindowsPodSandboxStats", "containers", 5, "repeated runtime.v1.WindowsContainerStats"),
    ("runtime.v1.NetworkUsage", "timestamp", 1, "int64"),
    ("runtime.v1.NetworkUsage", "default_interface", 2, "runtime.v1.NetworkInterfaceUsage"),
    ("runtime.v1.NetworkUsage", "interfaces", 3, "repeated runtime.v1.NetworkInterfaceUsage"),
    ("runtime.v1.WindowsNetworkUsage", "timestamp", 1, "int64"),
    ("runtime.v1.WindowsNetworkUsage", "default_interface", 2, "runtime.v1.WindowsNetworkInterfaceUsage"),
    ("runtime.v1.WindowsNetworkUsage", "interfaces", 3, "repeated runtime.v1.WindowsNetworkInterfaceUsage"),
    ("runtime.v1.NetworkInterfaceUsage", "name", 1, "string"),
    ("runtime.v1.NetworkInterfaceUsage", "rx_bytes", 2, "runtime.v1.UInt64Value"),
    ("runtime.v1.NetworkInterfaceUsage", "rx_errors", 3, "runtime.v1.UInt64Value"),
    ("runtime.v1.NetworkInterfaceUsage", "tx_bytes", 4, "runtime.v1.UInt64Value"),
    ("runtime.v1.NetworkInterfaceUsage", "tx_errors", 5, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsNetworkInterfaceUsage", "name", 1, "string"),
    ("runtime.v1.WindowsNetworkInterfaceUsage", "rx_bytes", 2, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsNetworkInterfaceUsage", "rx_packets_dropped", 3, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsNetworkInterfaceUsage", "tx_bytes", 4, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsNetworkInterfaceUsage", "tx_packets_dropped", 5, "runtime.v1.UInt64Value"),
    ("runtime.v1.ProcessUsage", "timestamp", 1, "int64"),
    ("runtime.v1.ProcessUsage", "process_count", 2, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsProcessUsage", "timestamp", 1, "int64"),
    ("runtime.v1.WindowsProcessUsage", "process_count", 2, "runtime.v1.UInt64Value"),
    ("runtime.v1.ImageSpec", "image", 1, "string"),
    ("runtime.v1.ImageSpec", "annotations", 2, "map<string, string>"),
    ("runtime.v1.ImageSpec", "user_specified_image", 18, "string"),
    ("runtime.v1.ImageSpec", "runtime_handler", 19, "string"),
    ("runtime.v1.ImageSpec", "image_ref", 20, "string"),
    ("runtime.v1.KeyValue", "key", 1, "string"),
    ("runtime.v1.KeyValue", "value", 2, "bytes"),
    ("runtime.v1.LinuxContainerResources", "cpu_period", 1, "int64"),
    ("runtime.v1.LinuxContainerResources", "cpu_quota", 2, "int64"),
    ("runtime.v1.LinuxContainerResources", "cpu_shares", 3, "int64"),
    ("runtime.v1.LinuxContainerResources", "memory_limit_in_bytes", 4, "int64"),
    ("runtime.v1.LinuxContainerResources", "oom_score_adj", 5, "int64"),
    ("runtime.v1.LinuxContainerResources", "cpuset_cpus", 6, "string"),
    ("runtime.v1.LinuxContainerResources", "cpuset_mems", 7, "string"),
    ("runtime.v1.LinuxContainerResources", "hugepage_limits", 8, "repeated runtime.v1.HugepageLimit"),
    ("runtime.v1.LinuxContainerResources", "unified", 9, "map<string, string>"),
    ("runtime.v1.LinuxContainerResources", "memory_swap_limit_in_bytes", 10, "int64"),
    ("runtime.v1.HugepageLimit", "page_size", 1, "string"),
    ("runtime.v1.HugepageLimit", "limit", 2, "uint64"),
    ("runtime.v1.SELinuxOption", "user", 1, "string"),
    ("runtime.v1.SELinuxOption", "role", 2, "string"),
    ("runtime.v1.SELinuxOption", "type", 3, "string"),
    ("runtime.v1.SELinuxOption", "level", 4, "string"),
    ("runtime.v1.Capability", "add_capabilities", 1, "repeated string"),
    ("runtime.v1.Capability", "drop_capabilities", 2, "repeated string"),
    ("runtime.v1.Capability", "add_ambient_capabilities", 3, "repeated string"),
    ("runtime.v1.LinuxContainerSecurityContext", "capabilities", 1, "runtime.v1.Capability"),
    ("runtime.v1.LinuxContainerSecurityContext", "privileged", 2, "bool"),
    ("runtime.v1.LinuxContainerSecurityContext", "namespace_options", 3, "runtime.v1.NamespaceOption"),
    ("runtime.v1.LinuxContainerSecurityContext", "selinux_options", 4, "runtime.v1.SELinuxOption"),
    ("runtime.v1.LinuxContainerSecurityContext", "run_as_user", 5, "runtime.v1.Int64Value"),
    ("runtime.v1.LinuxContainerSecurityContext", "run_as_group", 12, "runtime.v1.Int64Value"),
    ("runtime.v1.LinuxContainerSecurityContext", "run_as_username", 6, "string"),
    ("runtime.v1.LinuxContainerSecurityContext", "readonly_rootfs", 7, "bool"),
    ("runtime.v1.LinuxContainerSecurityContext", "supplemental_groups", 8, "repeated int64"),
    (
        "runtime.v1.LinuxContainerSecurityContext",
        "supplemental_groups_policy",
        17,
        "runtime.v1.SupplementalGroupsPolicy",
    ),
    ("runtime.v1.LinuxContainerSecurityContext", "no_new_privs", 11, "bool"),
    ("runtime.v1.LinuxContainerSecurityContext", "masked_paths", 13, "repeated string"),
    ("runtime.v1.LinuxContainerSecurityContext", "readonly_paths", 14, "repeated string"),
    ("runtime.v1.LinuxContainerSecurityContext", "seccomp", 15, "runtime.v1.SecurityProfile"),
    ("runtime.v1.LinuxContainerSecurityContext", "apparmor", 16, "runtime.v1.SecurityProfile"),
    ("runtime.v1.LinuxContainerSecurityContext", "apparmor_profile", 9, "string"),
    ("runtime.v1.LinuxContainerSecurityContext", "seccomp_profile_path", 10, "string"),
    ("runtime.v1.LinuxContainerConfig", "resources", 1, "runtime.v1.LinuxContainerResources"),
    ("runtime.v1.LinuxContainerConfig", "security_context", 2, "runtime.v1.LinuxContainerSecurityContext"),
    ("runtime.v1.LinuxContainerUser", "uid", 1, "int64"),
    ("runtime.v1.LinuxContainerUser", "gid", 2, "int64"),
    ("runtime.v1.LinuxContainerUser", "supplemental_groups", 3, "repeated int64"),
    ("runtime.v1.WindowsNamespaceOption", "network", 1, "runtime.v1.NamespaceMode"),
    ("runtime.v1.WindowsSandboxSecurityContext", "run_as_username", 1, "string"),
    ("runtime.v1.WindowsSandboxSecurityContext", "credential_spec", 2, "string"),
    ("runtime.v1.WindowsSandboxSecurityContext", "host_process", 3, "bool"),
    ("runtime.v1.WindowsSandboxSecurityContext", "namespace_options", 4, "runtime.v1.WindowsNamespaceOption"),
    ("runtime.v1.WindowsPodSandboxConfig", "security_context", 1, "runtime.v1.WindowsSandboxSecurityContext"),
    ("runtime.v1.WindowsContainerSecurityContext", "run_as_username", 1, "string"),
    ("runtime.v1.WindowsContainerSecurityContext", "credential_spec", 2, "string"),
    ("runtime.v1.WindowsContainerSecurityContext", "host_process", 3, "bool"),
    ("runtime.v1.WindowsContainerConfig", "resources", 1, "runtime.v1.WindowsContainerResources"),
    (
        "runtime.v1.WindowsContainerConfig",
        "security_context",
        2,
        "runtime.v1.WindowsContainerSecurityContext",
    ),
    ("runtime.v1.WindowsContainerResources", "cpu_shares", 1, "int64"),
    ("runtime.v1.WindowsContainerResources", "cpu_count", 2, "int64"),
    ("runtime.v1.WindowsContainerResources", "cpu_maximum", 3, "int64"),
    ("runtime.v1.WindowsContainerResources", "memory_limit_in_bytes", 4, "int64"),
    ("runtime.v1.WindowsContainerResources", "rootfs_size_in_bytes", 5, "int64"),
    (
        "runtime.v1.WindowsContainerResources",
        "affinity_cpus",
        6,
        "repeated runtime.v1.WindowsCpuGroupAffinity",
    ),
    ("runtime.v1.WindowsCpuGroupAffinity", "cpu_mask", 1, "uint64"),
    ("runtime.v1.WindowsCpuGroupAffinity", "cpu_group", 2, "uint32"),
    ("runtime.v1.ContainerMetadata", "name", 1, "string"),
    ("runtime.v1.ContainerMetadata", "attempt", 2, "uint32"),
    ("runtime.v1.Device", "container_path", 1, "string"),
    ("runtime.v1.Device", "host_path", 2, "string"),
    ("runtime.v1.Device", "permissions", 3, "string"),
    ("runtime.v1.CDIDevice", "name", 1, "string"),
    ("runtime.v1.ContainerConfig", "metadata", 1, "runtime.v1.ContainerMetadata"),
    ("runtime.v1.ContainerConfig", "image", 2, "runtime.v1.ImageSpec"),
    ("runtime.v1.ContainerConfig", "command", 3, "repeated string"),
    ("runtime.v1.ContainerConfig", "args", 4, "repeated string"),
    ("runtime.v1.ContainerConfig", "working_dir", 5, "string"),
    ("runtime.v1.ContainerConfig", "envs", 6, "repeated runtime.v1.KeyValue"),
    ("runtime.v1.ContainerConfig", "mounts", 7, "repeated runtime.v1.Mount"),
    ("runtime.v1.ContainerConfig", "devices", 8, "repeated runtime.v1.Device"),
    ("runtime.v1.ContainerConfig", "labels", 9, "map<string, string>"),
    ("runtime.v1.ContainerConfig", "annotations", 10, "map<string, string>"),
    ("runtime.v1.ContainerConfig", "log_path", 11, "string"),
    ("runtime.v1.ContainerConfig", "stdin", 12, "bool"),
    ("runtime.v1.ContainerConfig", "stdin_once", 13, "bool"),
    ("runtime.v1.ContainerConfig", "tty", 14, "bool"),
    ("runtime.v1.ContainerConfig", "linux", 15, "runtime.v1.LinuxContainerConfig"),
    ("runtime.v1.ContainerConfig", "windows", 16, "runtime.v1.WindowsContainerConfig"),
    ("runtime.v1.ContainerConfig", "CDI_devices", 17, "repeated runtime.v1.CDIDevice"),
    ("runtime.v1.ContainerConfig", "stop_signal", 18, "runtime.v1.Signal"),
    ("runtime.v1.CreateContainerRequest", "pod_sandbox_id", 1, "string"),
    ("runtime.v1.CreateContainerRequest", "config", 2, "runtime.v1.ContainerConfig"),
    ("runtime.v1.CreateContainerRequest", "sandbox_config", 3, "runtime.v1.PodSandboxConfig"),
    ("runtime.v1.CreateContainerResponse", "container_id", 1, "string"),
    ("runtime.v1.StartContainerRequest", "container_id", 1, "string"),
    ("runtime.v1.StopContainerRequest", "container_id", 1, "string"),
    ("runtime.v1.StopContainerRequest", "timeout", 2, "int64"),
    ("runtime.v1.RemoveContainerRequest", "container_id", 1, "string"),
    ("runtime.v1.ContainerStateValue", "state", 1, "runtime.v1.ContainerState"),
    ("runtime.v1.ContainerFilter", "id", 1, "string"),
    ("runtime.v1.ContainerFilter", "state", 2, "runtime.v1.ContainerStateValue"),
    ("runtime.v1.ContainerFilter", "pod_sandbox_id", 3, "string"),
    ("runtime.v1.ContainerFilter", "label_selector", 4, "map<string, string>"),
    ("runtime.v1.ListContainersRequest", "filter", 1, "runtime.v1.ContainerFilter"),
    ("runtime.v1.Container", "id", 1, "string"),
    ("runtime.v1.Container", "pod_sandbox_id", 2, "string"),
    ("runtime.v1.Container", "metadata", 3, "runtime.v1.ContainerMetadata"),
    ("runtime.v1.Container", "image", 4, "runtime.v1.ImageSpec"),
    ("runtime.v1.Container", "image_ref", 5, "string"),
    ("runtime.v1.Container", "state", 6, "runtime.v1.ContainerState"),
    ("runtime.v1.Container", "created_at", 7, "int64"),
    ("runtime.v1.Container", "labels", 8, "map<string, string>"),
    ("runtime.v1.Container", "annotations", 9, "map<string, string>"),
    ("runtime.v1.Container", "image_id", 10, "string"),
    ("runtime.v1.ListContainersResponse", "containers", 1, "repeated runtime.v1.Container"),
    ("runtime.v1.StreamContainersRequest", "filter", 1, "runtime.v1.ContainerFilter"),
    ("runtime.v1.StreamContainersResponse", "containers", 1, "repeated runtime.v1.Container"),
    ("runtime.v1.ContainerStatusRequest", "container_id", 1, "string"),
    ("runtime.v1.ContainerStatusRequest", "verbose", 2, "bool"),
    ("runtime.v1.ContainerStatus", "id", 1, "string"),
    ("runtime.v1.ContainerStatus", "metadata", 2, "runtime.v1.ContainerMetadata"),
    ("runtime.v1.ContainerStatus", "state", 3, "runtime.v1.ContainerState"),
    ("runtime.v1.ContainerStatus", "created_at", 4, "int64"),
    ("runtime.v1.ContainerStatus", "started_at", 5, "int64"),
    ("runtime.v1.ContainerStatus", "finished_at", 6, "int64"),
    ("runtime.v1.ContainerStatus", "exit_code", 7, "int32"),
    ("runtime.v1.ContainerStatus", "image", 8, "runtime.v1.ImageSpec"),
    ("runtime.v1.ContainerStatus", "image_ref", 9, "string"),
    ("runtime.v1.ContainerStatus", "reason", 10, "string"),
    ("runtime.v1.ContainerStatus", "message", 11, "string"),
    ("runtime.v1.ContainerStatus", "labels", 12, "map<string, string>"),
    ("runtime.v1.ContainerStatus", "annotations", 13, "map<string, string>"),
    ("runtime.v1.ContainerStatus", "mounts", 14, "repeated runtime.v1.Mount"),
    ("runtime.v1.ContainerStatus", "log_path", 15, "string"),
    ("runtime.v1.ContainerStatus", "resources", 16, "runtime.v1.ContainerResources"),
    ("runtime.v1.ContainerStatus", "image_id", 17, "string"),
    ("runtime.v1.ContainerStatus", "user", 18, "runtime.v1.ContainerUser"),
    ("runtime.v1.ContainerStatus", "stop_signal", 19, "runtime.v1.Signal"),
    ("runtime.v1.ContainerStatusResponse", "status", 1, "runtime.v1.ContainerStatus"),
    ("runtime.v1.ContainerStatusResponse", "info", 2, "map<string, string>"),
    ("runtime.v1.ContainerResources", "linux", 1, "runtime.v1.LinuxContainerResources"),
    ("runtime.v1.ContainerResources", "windows", 2, "runtime.v1.WindowsContainerResources"),
    ("runtime.v1.ContainerUser", "linux", 1, "runtime.v1.LinuxContainerUser"),
    ("runtime.v1.UpdateContainerResourcesRequest", "container_id", 1, "string"),
    ("runtime.v1.UpdateContainerResourcesRequest", "linux", 2, "runtime.v1.LinuxContainerResources"),
    ("runtime.v1.UpdateContainerResourcesRequest", "windows", 3, "runtime.v1.WindowsContainerResources"),
    ("runtime.v1.UpdateContainerResourcesRequest", "annotations", 4, "map<string, string>"),
    ("runtime.v1.ExecSyncRequest", "container_id", 1, "string"),
    ("runtime.v1.ExecSyncRequest", "cmd", 2, "repeated string"),
    ("runtime.v1.ExecSyncRequest", "timeout", 3, "int64"),
    ("runtime.v1.ExecSyncResponse", "stdout", 1, "bytes"),
    ("runtime.v1.ExecSyncResponse", "stderr", 2, "bytes"),
    ("runtime.v1.ExecSyncResponse", "exit_code", 3, "int32"),
    ("runtime.v1.ExecRequest", "container_id", 1, "string"),
    ("runtime.v1.ExecRequest", "cmd", 2, "repeated string"),
    ("runtime.v1.ExecRequest", "tty", 3, "bool"),
    ("runtime.v1.ExecRequest", "stdin", 4, "bool"),
    ("runtime.v1.ExecRequest", "stdout", 5, "bool"),
    ("runtime.v1.ExecRequest", "stderr", 6, "bool"),
    ("runtime.v1.ExecResponse", "url", 1, "string"),
    ("runtime.v1.AttachRequest", "container_id", 1, "string"),
    ("runtime.v1.AttachRequest", "stdin", 2, "bool"),
    ("runtime.v1.AttachRequest", "tty", 3, "bool"),
    ("runtime.v1.AttachRequest", "stdout", 4, "bool"),
    ("runtime.v1.AttachRequest", "stderr", 5, "bool"),
    ("runtime.v1.AttachResponse", "url", 1, "string"),
    ("runtime.v1.PortForwardRequest", "pod_sandbox_id", 1, "string"),
    ("runtime.v1.PortForwardRequest", "port", 2, "repeated int32"),
    ("runtime.v1.PortForwardResponse", "url", 1, "string"),
    ("runtime.v1.ImageFilter", "image", 1, "runtime.v1.ImageSpec"),
    ("runtime.v1.ListImagesRequest", "filter", 1, "runtime.v1.ImageFilter"),
    ("runtime.v1.Image", "id", 1, "string"),
    ("runtime.v1.Image", "repo_tags", 2, "repeated string"),
    ("runtime.v1.Image", "repo_digests", 3, "repeated string"),
    ("runtime.v1.Image", "size", 4, "uint64"),
    ("runtime.v1.Image", "uid", 5, "runtime.v1.Int64Value"),
    ("runtime.v1.Image", "username", 6, "string"),
    ("runtime.v1.Image", "spec", 7, "runtime.v1.ImageSpec"),
    ("runtime.v1.Image", "pinned", 8, "bool"),
    ("runtime.v1.ListImagesResponse", "images", 1, "repeated runtime.v1.Image"),
    ("runtime.v1.StreamImagesRequest", "filter", 1, "runtime.v1.ImageFilter"),
    ("runtime.v1.StreamImagesResponse", "images", 1, "repeated runtime.v1.Image"),
    ("runtime.v1.ImageStatusRequest", "image", 1, "runtime.v1.ImageSpec"),
    ("runtime.v1.ImageStatusRequest", "verbose", 2, "bool"),
    ("runtime.v1.ImageStatusResponse", "image", 1, "runtime.v1.Image"),
    ("runtime.v1.ImageStatusResponse", "info", 2, "map<string, string>"),
    ("runtime.v1.AuthConfig", "username", 1, "string"),
    ("runtime.v1.AuthConfig", "password", 2, "string"),
    ("runtime.v1.AuthConfig", "auth", 3, "string"),
    ("runtime.v1.AuthConfig", "server_address", 4, "string"),
    ("runtime.v1.AuthConfig", "identity_token", 5, "string"),
    ("runtime.v1.AuthConfig", "registry_token", 6, "string"),
    ("runtime.v1.PullImageRequest", "image", 1, "runtime.v1.ImageSpec"),
    ("runtime.v1.PullImageRequest", "auth", 2, "runtime.v1.AuthConfig"),
    ("runtime.v1.PullImageRequest", "sandbox_config", 3, "runtime.v1.PodSandboxConfig"),
    ("runtime.v1.PullImageResponse", "image_ref", 1, "string"),
    ("runtime.v1.RemoveImageRequest", "image", 1, "runtime.v1.ImageSpec"),
    ("runtime.v1.NetworkConfig", "pod_cidr", 1, "string"),
    ("runtime.v1.RuntimeConfig", "network_config", 1, "runtime.v1.NetworkConfig"),
    ("runtime.v1.UpdateRuntimeConfigRequest", "runtime_config", 1, "runtime.v1.RuntimeConfig"),
    ("runtime.v1.RuntimeCondition", "type", 1, "string"),
    ("runtime.v1.RuntimeCondition", "status", 2, "bool"),
    ("runtime.v1.RuntimeCondition", "reason", 3, "string"),
    ("runtime.v1.RuntimeCondition", "message", 4, "string"),
    ("runtime.v1.RuntimeStatus", "conditions", 1, "repeated runtime.v1.RuntimeCondition"),
    ("runtime.v1.StatusRequest", "verbose", 1, "bool"),
    ("runtime.v1.RuntimeHandlerFeatures", "recursive_read_only_mounts", 1, "bool"),
    ("runtime.v1.RuntimeHandlerFeatures", "user_namespaces", 2, "bool"),
    ("runtime.v1.RuntimeHandler", "name", 1, "string"),
    ("runtime.v1.RuntimeHandler", "features", 2, "runtime.v1.RuntimeHandlerFeatures"),
    ("runtime.v1.RuntimeFeatures", "supplemental_groups_policy", 1, "bool"),
    ("runtime.v1.RuntimeFeatures", "user_namespaces_host_network", 2, "bool"),
    ("runtime.v1.StatusResponse", "status", 1, "runtime.v1.RuntimeStatus"),
    ("runtime.v1.StatusResponse", "info", 2, "map<string, string>"),
    ("runtime.v1.StatusResponse", "runtime_handlers", 3, "repeated runtime.v1.RuntimeHandler"),
    ("runtime.v1.StatusResponse", "features", 4, "runtime.v1.RuntimeFeatures"),
    ("runtime.v1.UInt64Value", "value", 1, "uint64"),
    ("runtime.v1.FilesystemIdentifier", "mountpoint", 1, "string"),
    ("runtime.v1.FilesystemUsage", "timestamp", 1, "int64"),
    ("runtime.v1.FilesystemUsage", "fs_id", 2, "runtime.v1.FilesystemIdentifier"),
    ("runtime.v1.FilesystemUsage", "used_bytes", 3, "runtime.v1.UInt64Value"),
    ("runtime.v1.FilesystemUsage", "inodes_used", 4, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsFilesystemUsage", "timestamp", 1, "int64"),
    ("runtime.v1.WindowsFilesystemUsage", "fs_id", 2, "runtime.v1.FilesystemIdentifier"),
    ("runtime.v1.WindowsFilesystemUsage", "used_bytes", 3, "runtime.v1.UInt64Value"),
    ("runtime.v1.ImageFsInfoResponse", "image_filesystems", 1, "repeated runtime.v1.FilesystemUsage"),
    ("runtime.v1.ImageFsInfoResponse", "container_filesystems", 2, "repeated runtime.v1.FilesystemUsage"),
    ("runtime.v1.ContainerStatsRequest", "container_id", 1, "string"),
    ("runtime.v1.ContainerStatsResponse", "stats", 1, "runtime.v1.ContainerStats"),
    ("runtime.v1.ListContainerStatsRequest", "filter", 1, "runtime.v1.ContainerStatsFilter"),
    ("runtime.v1.ContainerStatsFilter", "id", 1, "string"),
    ("runtime.v1.ContainerStatsFilter", "pod_sandbox_id", 2, "string"),
    ("runtime.v1.ContainerStatsFilter", "label_selector", 3, "map<string, string>"),
    ("runtime.v1.ListContainerStatsResponse", "stats", 1, "repeated runtime.v1.ContainerStats"),
    ("runtime.v1.StreamContainerStatsRequest", "filter", 1, "runtime.v1.ContainerStatsFilter"),
    ("runtime.v1.StreamContainerStatsResponse", "container_stats", 1, "repeated runtime.v1.ContainerStats"),
    ("runtime.v1.ContainerAttributes", "id", 1, "string"),
    ("runtime.v1.ContainerAttributes", "metadata", 2, "runtime.v1.ContainerMetadata"),
    ("runtime.v1.ContainerAttributes", "labels", 3, "map<string, string>"),
    ("runtime.v1.ContainerAttributes", "annotations", 4, "map<string, string>"),
    ("runtime.v1.ContainerStats", "attributes", 1, "runtime.v1.ContainerAttributes"),
    ("runtime.v1.ContainerStats", "cpu", 2, "runtime.v1.CpuUsage"),
    ("runtime.v1.ContainerStats", "memory", 3, "runtime.v1.MemoryUsage"),
    ("runtime.v1.ContainerStats", "writable_layer", 4, "runtime.v1.FilesystemUsage"),
    ("runtime.v1.ContainerStats", "swap", 5, "runtime.v1.SwapUsage"),
    ("runtime.v1.ContainerStats", "io", 6, "runtime.v1.IoUsage"),
    ("runtime.v1.WindowsContainerStats", "attributes", 1, "runtime.v1.ContainerAttributes"),
    ("runtime.v1.WindowsContainerStats", "cpu", 2, "runtime.v1.WindowsCpuUsage"),
    ("runtime.v1.WindowsContainerStats", "memory", 3, "runtime.v1.WindowsMemoryUsage"),
    ("runtime.v1.WindowsContainerStats", "writable_layer", 4, "runtime.v1.WindowsFilesystemUsage"),
    ("runtime.v1.PsiStats", "Full", 1, "runtime.v1.PsiData"),
    ("runtime.v1.PsiStats", "Some", 2, "runtime.v1.PsiData"),
    ("runtime.v1.PsiData", "Total", 1, "uint64"),
    ("runtime.v1.PsiData", "Avg10", 2, "double"),
    ("runtime.v1.PsiData", "Avg60", 3, "double"),
    ("runtime.v1.PsiData", "Avg300", 4, "double"),
    ("runtime.v1.CpuUsage", "timestamp", 1, "int64"),
    ("runtime.v1.CpuUsage", "usage_core_nano_seconds", 2, "runtime.v1.UInt64Value"),
    ("runtime.v1.CpuUsage", "usage_nano_cores", 3, "runtime.v1.UInt64Value"),
    ("runtime.v1.CpuUsage", "psi", 4, "runtime.v1.PsiStats"),
    ("runtime.v1.WindowsCpuUsage", "timestamp", 1, "int64"),
    ("runtime.v1.WindowsCpuUsage", "usage_core_nano_seconds", 2, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsCpuUsage", "usage_nano_cores", 3, "runtime.v1.UInt64Value"),
    ("runtime.v1.MemoryUsage", "timestamp", 1, "int64"),
    ("runtime.v1.MemoryUsage", "working_set_bytes", 2, "runtime.v1.UInt64Value"),
    ("runtime.v1.MemoryUsage", "available_bytes", 3, "runtime.v1.UInt64Value"),
    ("runtime.v1.MemoryUsage", "usage_bytes", 4, "runtime.v1.UInt64Value"),
    ("runtime.v1.MemoryUsage", "rss_bytes", 5, "runtime.v1.UInt64Value"),
    ("runtime.v1.MemoryUsage", "page_faults", 6, "runtime.v1.UInt64Value"),
    ("runtime.v1.MemoryUsage", "major_page_faults", 7, "runtime.v1.UInt64Value"),
    ("runtime.v1.MemoryUsage", "psi", 8, "runtime.v1.PsiStats"),
    ("runtime.v1.IoUsage", "timestamp", 1, "int64"),
    ("runtime.v1.IoUsage", "psi", 2, "runtime.v1.PsiStats"),
    ("runtime.v1.SwapUsage", "timestamp", 1, "int64"),
    ("runtime.v1.SwapUsage", "swap_available_bytes", 2, "runtime.v1.UInt64Value"),
    ("runtime.v1.SwapUsage", "swap_usage_bytes", 3, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsMemoryUsage", "timestamp", 1, "int64"),
    ("runtime.v1.WindowsMemoryUsage", "working_set_bytes", 2, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsMemoryUsage", "available_bytes", 3, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsMemoryUsage", "page_faults", 4, "runtime.v1.UInt64Value"),
    ("runtime.v1.WindowsMemoryUsage", "commit_memory_bytes", 5, "runtime.v1.UInt64Value"),
    ("runtime.v1.ReopenContainerLogRequest", "container_id", 1, "string"),
    ("runtime.v1.CheckpointContainerRequest", "container_id", 1, "string"),
    ("runtime.v1.CheckpointContainerRequest", "location", 2, "string"),
    ("runtime.v1.CheckpointContainerRequest", "timeout", 3, "int64"),
    ("runtime.v1.ContainerEventResponse", "container_id", 1, "string"),
    ("runtime.v1.ContainerEventResponse", "container_event_type", 2, "runtime.v1.ContainerEventType"),
    ("runtime.v1.ContainerEventResponse", "created_at", 3, "int64"),
    ("runtime.v1.ContainerEventResponse", "pod_sandbox_status", 4, "runtime.v1.PodSandboxStatus"),
    ("runtime.v1.ContainerEventResponse", "containers_statuses", 5, "repeated runtime.v1.ContainerStatus"),
    ("runtime.v1.ListMetricDescriptorsResponse", "descriptors", 1, "repeated runtime.v1.MetricDescriptor"),
    ("runtime.v1.MetricDescriptor", "name", 1, "string"),
    ("runtime.v1.MetricDescriptor", "help", 2, "string"),
    ("runtime.v1.MetricDescriptor", "label_keys", 3, "repeated string"),
    ("runtime.v1.ListPodSandboxMetricsResponse", "pod_metrics", 1, "repeated runtime.v1.PodSandboxMetrics"),
    (
        "runtime.v1.StreamPodSandboxMetricsResponse",
        "pod_sandbox_metrics",
        1,
        "repeated runtime.v1.PodSandboxMetrics",
    ),
    ("runtime.v1.PodSandboxMetrics", "pod_sandbox_id", 1, "string"),
    ("runtime.v1.PodSandboxMetrics", "metrics", 2, "repeated runtime.v1.Metric"),
    ("runtime.v1.PodSandboxMetrics", "container_metrics", 3, "repeated runtime.v1.ContainerMetrics"),
    ("runtime.v1.ContainerMetrics", "container_id", 1, "string"),
    ("runtime.v1.ContainerMetrics", "metrics", 2, "repeated runtime.v1.Metric"),
    ("runtime.v1.Metric", "name", 1, "string"),
    ("runtime.v1.Metric", "timestamp", 2, "int64"),
    ("runtime.v1.Metric", "metric_type", 3, "runtime.v1.MetricType"),
    ("runtime.v1.Metric", "label_values", 4, "repeated string"),
    ("runtime.v1.Metric", "value", 5, "runtime.v1.UInt64Value"),
    ("runtime.v1.RuntimeConfigResponse", "linux", 1, "runtime.v1.LinuxRuntimeConfiguration"),
    ("runtime.v1.LinuxRuntimeConfiguration", "cgroup_driver", 1, "runtime.v1.CgroupDriver"),
    ("runtime.v1.UpdatePodSandboxResourcesRequest", "pod_sandbox_id", 1, "string"),
    ("runtime.v1.UpdatePodSandboxResourcesRequest", "overhead", 2, "runtime.v1.LinuxContainerResources"),
    ("runtime.v1.UpdatePodSandboxResourcesRequest", "resources", 3, "runtime.v1.LinuxContainerResources"),
]

# Messages upstream defines with no fields at all.
EMPTY_MESSAGES: list[str] = [
    "runtime.v1.StopPodSandboxResponse",
    "runtime.v1.RemovePodSandboxResponse",
    "runtime.v1.StartContainerResponse",
    "runtime.v1.StopContainerResponse",
    "runtime.v1.RemoveContainerResponse",
    "runtime.v1.UpdateContainerResourcesResponse",
    "runtime.v1.RemoveImageResponse",
    "runtime.v1.UpdateRuntimeConfigResponse",
    "runtime.v1.ImageFsInfoRequest",
    "runtime.v1.ReopenContainerLogResponse",
    "runtime.v1.CheckpointContainerResponse",
    "runtime.v1.GetEventsRequest",
    "runtime.v1.ListMetricDescriptorsRequest",
    "runtime.v1.ListPodSandboxMetricsRequest",
    "runtime.v1.StreamPodSandboxMetricsRequest",
    "runtime.v1.RuntimeConfigRequest",
    "runtime.v1.UpdatePodSandboxResourcesResponse",
]

ENUMS: list[EnumRow] = [
    ("runtime.v1.Protocol", "TCP", 0),
    ("runtime.v1.Protocol", "UDP", 1),
    ("runtime.v1.Protocol", "SCTP", 2),
    ("runtime.v1.MountPropagation", "PROPAGATION_PRIVATE", 0),
    ("runtime.v1.MountPropagation", "PROPAGATION_HOST_TO_CONTAINER", 1),
    ("runtime.v1.MountPropagation", "PROPAGATION_BIDIRECTIONAL", 2),
    ("runtime.v1.NamespaceMode", "POD", 0),
    ("runtime.v1.NamespaceMode", "CONTAINER", 1),
    ("runtime.v1.NamespaceMode", "NODE", 2),
    ("runtime.v1.NamespaceMode", "TARGET", 3),
    ("runtime.v1.SupplementalGroupsPolicy", "Merge", 0),
    ("runtime.v1.SupplementalGroupsPolicy", "Strict", 1),
    ("runtime.v1.PodSandboxState", "SANDBOX_READY", 0),
    ("runtime.v1.PodSandboxState", "SANDBOX_NOTREADY", 1),
    ("runtime.v1.Signal", "RUNTIME_DEFAULT", 0),
    ("runtime.v1.Signal", "SIGABRT", 1),
    ("runtime.v1.Signal", "SIGALRM", 2),
    ("runtime.v1.Signal", "SIGBUS", 3),
    ("runtime.v1.Signal", "SIGCHLD", 4),
    ("runtime.v1.Signal", "SIGCLD", 5),
    ("runtime.v1.Signal", "SIGCONT", 6),
    ("runtime.v1.Signal", "SIGFPE", 7),
    ("runtime.v1.Signal", "SIGHUP", 8),
    ("runtime.v1.Signal", "SIGILL", 9),
    ("runtime.v1.Signal", "SIGINT", 10),
    ("runtime.v1.Signal", "SIGIO", 11),
    ("runtime.v1.Signal", "SIGIOT", 12),
    ("runtime.v1.Signal", "SIGKILL", 13),
    ("runtime.v1.Signal", "SIGPIPE", 14),
    ("runtime.v1.Signal", "SIGPOLL", 15),
    ("runtime.v1.Signal", "SIGPROF", 16),
    ("runtime.v1.Signal", "SIGPWR", 17),
    ("runtime.v1.Signal", "SIGQUIT", 18),
    ("runtime.v1.Signal", "SIGSEGV", 19),
    ("runtime.v1.Signal", "SIGSTKFLT", 20),
    ("runtime.v1.Signal", "SIGSTOP", 21),
    ("runtime.v1.Signal", "SIGSYS", 22),
    ("runtime.v1.Signal", "SIGTERM", 23),
    ("runtime.v1.Signal", "SIGTRAP", 24),
    ("runtime.v1.Signal", "SIGTSTP", 25),
    ("runtime.v1.Signal", "SIGTTIN", 26),
    ("runtime.v1.Signal", "SIGTTOU", 27),
    ("runtime.v1.Signal", "SIGURG", 28),
    ("runtime.v1.Signal", "SIGUSR1", 29),
    ("runtime.v1.Signal", "SIGUSR2", 30),
    ("runtime.v1.Signal", "SIGVTALRM", 31),
    ("runtime.v1.Signal", "SIGWINCH", 32),
    ("runtime.v1.Signal", "SIGXCPU", 33),
    ("runtime.v1.Signal", "SIGXFSZ", 34),
    ("runtime.v1.Signal", "SIGRTMIN", 35),
    ("runtime.v1.Signal", "SIGRTMINPLUS1", 36),
    ("runtime.v1.Signal", "SIGRTMINPLUS2", 37),
    ("runtime.v1.Signal", "SIGRTMINPLUS3", 38),
    ("runtime.v1.Signal", "SIGRTMINPLUS4", 39),
    ("runtime.v1.Signal", "SIGRTMINPLUS5", 40),
    ("runtime.v1.Signal", "SIGRTMINPLUS6", 41),
    ("runtime.v1.Signal", "SIGRTMINPLUS7", 42),
    ("runtime.v1.Signal", "SIGRTMINPLUS8", 43),
    ("runtime.v1.Signal", "SIGRTMINPLUS9", 44),
    ("runtime.v1.Signal", "SIGRTMINPLUS10", 45),
    ("runtime.v1.Signal", "SIGRTMINPLUS11", 46),
    ("runtime.v1.Signal", "SIGRTMINPLUS12", 47),
    ("runtime.v1.Signal", "SIGRTMINPLUS13", 48),
    ("runtime.v1.Signal", "SIGRTMINPLUS14", 49),
    ("runtime.v1.Signal", "SIGRTMINPLUS15", 50),
    ("runtime.v1.Signal", "SIGRTMAXMINUS14", 51),
    ("runtime.v1.Signal", "SIGRTMAXMINUS13", 52),
    ("runtime.v1.Signal", "SIGRTMAXMINUS12", 53),
    ("runtime.v1.Signal", "SIGRTMAXMINUS11", 54),
    ("runtime.v1.Signal", "SIGRTMAXMINUS10", 55),
    ("runtime.v1.Signal", "SIGRTMAXMINUS9", 56),
    ("runtime.v1.Signal", "SIGRTMAXMINUS8", 57),
    ("runtime.v1.Signal", "SIGRTMAXMINUS7", 58),
    ("runtime.v1.Signal", "SIGRTMAXMINUS6", 59),
    ("runtime.v1.Signal", "SIGRTMAXMINUS5", 60),
    ("runtime.v1.Signal", "SIGRTMAXMINUS4", 61),
    ("runtime.v1.Signal", "SIGRTMAXMINUS3", 62),
    ("runtime.v1.Signal", "SIGRTMAXMINUS2", 63),
    ("runtime.v1.Signal", "SIGRTMAXMINUS1", 64),
    ("runtime.v1.Signal", "SIGRTMAX", 65),
    ("runtime.v1.ContainerState", "CONTAINER_CREATED", 0),
    ("runtime.v1.ContainerState", "CONTAINER_RUNNING", 1),
    ("runtime.v1.ContainerState", "CONTAINER_EXITED", 2),
    ("runtime.v1.ContainerState", "CONTAINER_UNKNOWN", 3),
    ("runtime.v1.ContainerEventType", "CONTAINER_CREATED_EVENT", 0),
    ("runtime.v1.ContainerEventType", "CONTAINER_STARTED_EVENT", 1),
    ("runtime.v1.ContainerEventType", "CONTAINER_STOPPED_EVENT", 2),
    ("runtime.v1.ContainerEventType", "CONTAINER_DELETED_EVENT", 3),
    ("runtime.v1.MetricType", "COUNTER", 0),
    ("runtime.v1.MetricType", "GAUGE", 1),
    ("runtime.v1.CgroupDriver", "SYSTEMD", 0),
    ("runtime.v1.CgroupDriver", "CGROUPFS", 1),
    ("runtime.v1.SecurityProfile.ProfileType", "RuntimeDefault", 0),
    ("runtime.v1.SecurityProfile.ProfileType", "Unconfined", 1),
    ("runtime.v1.SecurityProfile.ProfileType", "Localhost", 2),
]

# (service, method, request, response) without the package prefix; "stream " marks server streaming.
_METHODS_SHORT = [
    ("RuntimeService", "Version", "VersionRequest", "VersionResponse"),
    ("RuntimeService", "RunPodSandbox", "RunPodSandboxRequest", "RunPodSandboxResponse"),
    ("RuntimeService", "StopPodSandbox", "StopPodSandboxRequest", "StopPodSandboxResponse"),
    ("RuntimeService", "RemovePodSandbox", "RemovePodSandboxRequest", "RemovePodSandboxResponse"),
    ("RuntimeService", "PodSandboxStatus", "PodSandboxStatusRequest", "PodSandboxStatusResponse"),
    ("RuntimeService", "ListPodSandbox", "ListPodSandboxRequest", "ListPodSandboxResponse"),
    (
        "RuntimeService",
        "StreamPodSandboxes",
        "StreamPodSandboxesRequest",
        "stream StreamPodSandboxesResponse",
    ),
    ("RuntimeService", "CreateContainer", "CreateContainerRequest", "CreateContainerResponse"),
    ("RuntimeService", "StartContainer", "StartContainerRequest", "StartContainerResponse"),
    ("RuntimeService", "StopContainer", "StopContainerRequest", "StopContainerResponse"),
    ("RuntimeService", "RemoveContainer", "RemoveContainerRequest", "RemoveContainerResponse"),
    ("RuntimeService", "ListContainers", "ListContainersRequest", "ListContainersResponse"),
    ("RuntimeService", "StreamContainers", "StreamContainersRequest", "stream StreamContainersResponse"),
    ("RuntimeService", "ContainerStatus", "ContainerStatusRequest", "ContainerStatusResponse"),
    (
        "RuntimeService",
        "UpdateContainerResources",
        "UpdateContainerResourcesRequest",
        "UpdateContainerResourcesResponse",
    ),
    ("RuntimeService", "ReopenContainerLog", "ReopenContainerLogRequest", "ReopenContainerLogResponse"),
    ("RuntimeService", "ExecSync", "ExecSyncRequest", "ExecSyncResponse"),
    ("RuntimeService", "Exec", "ExecRequest", "ExecResponse"),
    ("RuntimeService", "Attach", "AttachRequest", "AttachResponse"),
    ("RuntimeService", "PortForward", "PortForwardRequest", "PortForwardResponse"),
    ("RuntimeService", "ContainerStats", "ContainerStatsRequest", "ContainerStatsResponse"),
    ("RuntimeService", "ListContainerStats", "ListContainerStatsRequest", "ListContainerStatsResponse"),
    (
        "RuntimeService",
        "StreamContainerStats",
        "StreamContainerStatsRequest",
        "stream StreamContainerStatsResponse",
    ),
    ("RuntimeService", "PodSandboxStats", "PodSandboxStatsRequest", "PodSandboxStatsResponse"),
    ("RuntimeService", "ListPodSandboxStats", "ListPodSandboxStatsRequest", "ListPodSandboxStatsResponse"),
    (
        "RuntimeService",
        "StreamPodSandboxStats",
        "StreamPodSandboxStatsRequest",
        "stream StreamPodSandboxStatsResponse",
    ),
    ("RuntimeService", "UpdateRuntimeConfig", "UpdateRuntimeConfigRequest", "UpdateRuntimeConfigResponse"),
    ("RuntimeService", "Status", "StatusRequest", "StatusResponse"),
    ("RuntimeService", "CheckpointContainer", "CheckpointContainerRequest", "CheckpointContainerResponse"),
    ("RuntimeService", "GetContainerEvents", "GetEventsRequest", "stream ContainerEventResponse"),
    (
        "RuntimeService",
        "ListMetricDescriptors",
        "ListMetricDescriptorsRequest",
        "ListMetricDescriptorsResponse",
    ),
    (
        "RuntimeService",
        "ListPodSandboxMetrics",
        "ListPodSandboxMetricsRequest",
        "ListPodSandboxMetricsResponse",
    ),
    (
        "RuntimeService",
        "StreamPodSandboxMetrics",
        "StreamPodSandboxMetricsRequest",
        "stream StreamPodSandboxMetricsResponse",
    ),
    ("RuntimeService", "RuntimeConfig", "RuntimeConfigRequest", "RuntimeConfigResponse"),
    (
        "RuntimeService",
        "UpdatePodSandboxResources",
        "UpdatePodSandboxResourcesRequest",
        "UpdatePodSandboxResourcesResponse",
    ),
    ("ImageService", "ListImages", "ListImagesRequest", "ListImagesResponse"),
    ("ImageService", "StreamImages", "StreamImagesRequest", "stream StreamImagesResponse"),
    ("ImageService", "ImageStatus", "ImageStatusRequest", "ImageStatusResponse"),
    ("ImageService", "PullImage", "PullImageRequest", "PullImageResponse"),
    ("ImageService", "RemoveImage", "RemoveImageRequest", "RemoveImageResponse"),
    ("ImageService", "ImageFsInfo", "ImageFsInfoRequest", "ImageFsInfoResponse"),
]

METHODS: list[MethodRow] = [
    (PKG + svc, name, _qualify(req), _qualify(resp)) for svc, name, req, resp in _METHODS_SHORT
]


def test_every_field_matches_upstream() -> None:
    assert check_fields(FIELDS) == []


def test_messages_without_fields_exist_and_stay_empty() -> None:
    pool = descriptor_pool.Default()
    for name in EMPTY_MESSAGES:
        assert pool.FindMessageTypeByName(name).fields == [], name


def test_no_message_left_out_of_the_tables() -> None:
    """Every message in the file is covered, so a new message must be added to the tables."""
    tabled = {row[0] for row in FIELDS} | set(EMPTY_MESSAGES)
    defined: set[str] = set()

    def walk(desc: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        full = prefix + desc.name
        if not desc.options.map_entry:
            defined.add(full)
        for nested in desc.nested_type:
            walk(nested, full + ".")

    proto = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(proto)
    for message in proto.message_type:
        walk(message, PKG)
    assert defined == tabled
    assert len(defined) == 170


def test_every_enum_matches_upstream() -> None:
    assert check_enums(ENUMS) == []
    enums = {row[0] for row in ENUMS}
    assert set(api_pb2.DESCRIPTOR.enum_types_by_name) == {
        e.removeprefix(PKG) for e in enums if e.count(".") == 2
    }


def test_every_method_matches_upstream() -> None:
    assert check_methods(METHODS) == []
    assert len(METHODS) == 41
    assert set(api_pb2.DESCRIPTOR.services_by_name) == {"RuntimeService", "ImageService"}


def test_file_package_and_name() -> None:
    assert api_pb2.DESCRIPTOR.package == "runtime.v1"
    assert api_pb2.DESCRIPTOR.name == "wharfd/api/cri/v1/api.proto"


def test_grpc_method_paths() -> None:
    """gRPC routes on /<package>.<Service>/<Method>; the generated stubs must use those paths."""
    assert api_pb2_grpc.RuntimeServiceStub is not None
    service = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    assert service.full_name == "runtime.v1.RuntimeService"
    assert service.methods_by_name["StreamPodSandboxes"].server_streaming
    assert not service.methods_by_name["StreamPodSandboxes"].client_streaming
    images = api_pb2.DESCRIPTOR.services_by_name["ImageService"]
    assert images.full_name == "runtime.v1.ImageService"


def test_deprecated_and_redacted_field_options() -> None:
    sandbox_sc = api_pb2.LinuxSandboxSecurityContext.DESCRIPTOR.fields_by_name
    assert sandbox_sc["seccomp_profile_path"].GetOptions().deprecated
    ctr_sc = api_pb2.LinuxContainerSecurityContext.DESCRIPTOR.fields_by_name
    assert ctr_sc["apparmor_profile"].GetOptions().deprecated
    assert ctr_sc["seccomp_profile_path"].GetOptions().deprecated
    auth = api_pb2.AuthConfig.DESCRIPTOR.fields_by_name
    redacted = {name for name, f in auth.items() if f.GetOptions().debug_redact}
    assert redacted == {"password", "auth", "identity_token", "registry_token"}


# Byte-level round trips: the expected bytes are worked out by hand from the
# protobuf encoding rules (tag = field << 3 | wire type).


def _roundtrip(message: Message, expected: bytes) -> None:
    assert message.SerializeToString(deterministic=True) == expected
    clone = type(message)()
    clone.ParseFromString(expected)
    assert clone == message


def test_version_request_bytes() -> None:
    # field 1, wire type 2 (len) -> 0x0a; length 5; "0.1.0"
    _roundtrip(api_pb2.VersionRequest(version="0.1.0"), b"\x0a\x050.1.0")


def test_version_response_bytes() -> None:
    msg = api_pb2.VersionResponse(
        version="0.1.0", runtime_name="wharfd", runtime_version="1.0", runtime_api_version="v1"
    )
    expected = b"\x0a\x050.1.0" + b"\x12\x06wharfd" + b"\x1a\x031.0" + b"\x22\x02v1"
    _roundtrip(msg, expected)


def test_pod_sandbox_metadata_bytes() -> None:
    msg = api_pb2.PodSandboxMetadata(name="nginx", uid="u1", namespace="default", attempt=1)
    # strings on fields 1-3 (tags 0x0a, 0x12, 0x1a); uint32 attempt on field 4, varint -> 0x20
    expected = b"\x0a\x05nginx" + b"\x12\x02u1" + b"\x1a\x07default" + b"\x20\x01"
    _roundtrip(msg, expected)


def test_map_field_bytes() -> None:
    msg = api_pb2.PodSandboxFilter(label_selector={"app": "web"})
    # label_selector is field 3; each entry is a nested message {1: key, 2: value}
    entry = b"\x0a\x03app" + b"\x12\x03web"
    _roundtrip(msg, b"\x1a" + bytes([len(entry)]) + entry)


def test_packed_repeated_int32_bytes() -> None:
    msg = api_pb2.PortForwardRequest(pod_sandbox_id="p", port=[80, 443])
    # proto3 packs repeated scalars: field 2 len-delimited, varints 0x50 and 0xbb 0x03
    _roundtrip(msg, b"\x0a\x01p" + b"\x12\x03\x50\xbb\x03")


def test_enum_and_wrapper_bytes() -> None:
    msg = api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_EXITED))
    # field 2 holds {1: enum 2}
    _roundtrip(msg, b"\x12\x02\x08\x02")


def test_camel_case_mapping_field_bytes() -> None:
    mapping = api_pb2.IDMapping(host_id=1000, container_id=0, length=1)
    msg = api_pb2.Mount(uidMappings=[mapping])
    # uidMappings is field 6; 1000 = varint 0xe8 0x07; zero container_id is omitted
    inner = b"\x08\xe8\x07" + b"\x18\x01"
    _roundtrip(msg, b"\x32" + bytes([len(inner)]) + inner)


def test_image_spec_high_field_numbers_bytes() -> None:
    msg = api_pb2.ImageSpec(image="busybox", user_specified_image="busybox:1")
    # field 18 wire type 2 -> tag 146 -> varint 0x92 0x01
    _roundtrip(msg, b"\x0a\x07busybox" + b"\x92\x01\x09busybox:1")


def test_double_field_bytes() -> None:
    msg = api_pb2.PsiData(Total=7, Avg10=1.5)
    # Total: field 1 varint; Avg10: field 2 wire type 1 (64-bit) -> 0x11 + little-endian double
    _roundtrip(msg, b"\x08\x07" + b"\x11" + struct.pack("<d", 1.5))


@pytest.mark.parametrize(
    ("signal", "number"),
    [("RUNTIME_DEFAULT", 0), ("SIGKILL", 13), ("SIGTERM", 23), ("SIGRTMIN", 35), ("SIGRTMAX", 65)],
)
def test_signal_enum_encoding(signal: str, number: int) -> None:
    assert api_pb2.Signal.Value(signal) == number
    msg = api_pb2.ContainerConfig(stop_signal=signal)
    # stop_signal is field 18, varint -> tag 144 -> 0x90 0x01; a zero enum is not written
    expected = b"" if number == 0 else b"\x90\x01" + bytes([number])
    _roundtrip(msg, expected)
