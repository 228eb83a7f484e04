"""`--format kube`: a Kubernetes Pod running the image of `--format oci`, whose securityContext
carries the jail's confinement: its user and groups, a read-only root, every capability dropped
but the profile's, no privilege escalation, the runtime's default seccomp profile, no host user
ids (`hostUsers: false`: a user namespace, where the cluster supports it), the writable
directories as emptyDir volumes (memory-backed for tmpfs ones), the live host binds as hostPath
volumes (readOnly unless rw: the node must have the directory), the memory and CPU limits and
requests (limits.py), the ports.

Written as JSON, which is YAML too: no YAML library is needed to write it, and kubectl and
`podman kube play` read it as it is. Kubernetes has no per-container pids limit (the kubelet's
podPidsLimit is per node); the profile's is kept as the annotation jailkit.dev/pids-max. Nor has
a Pod swap, memory.high or I/O weight fields, or noexec/nodev hostPath mounts: `notes` says so.
"""

import json

from jailkit.export import limits
from jailkit.export.oci import image_name
from jailkit.export.source import BuiltJail


def _dns_name(text: str) -> str:
    """A DNS-1123 label from a profile name (Pod, container and volume names must be)."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return out[:63].rstrip("-") or "jail"


def pod(jail: BuiltJail, ports: list[int]) -> dict:
    from jailkit.launch.spec import LaunchSpec

    spec = LaunchSpec.from_dict(jail.launch)
    name = _dns_name(spec.name)
    volumes, mounts = [], []
    for i, w in enumerate(spec.writable):
        volume = f"writable-{i}"
        empty = {"medium": "Memory"} if w.kind == "tmpfs" else {}
        if w.kind == "tmpfs" and w.size:
            empty["sizeLimit"] = str(w.size)
        volumes.append({"name": volume, "emptyDir": empty})
        mounts.append({"name": volume, "mountPath": w.path})
    for i, b in enumerate(sorted(spec.binds, key=lambda b: b.path.count("/"))):
        volume = f"bind-{i}"
        volumes.append({"name": volume, "hostPath": {"path": b.source, "type": "Directory"}})
        mounts.append({"name": volume, "mountPath": b.path, "readOnly": not b.rw})
    container = {
        "name": name,
        "image": image_name(jail),
        "imagePullPolicy": "IfNotPresent",
        "command": spec.command,
        "workingDir": spec.workdir,
        "env": [{"name": k, "value": v} for k, v in spec.env.items()],
        "securityContext": {
            "runAsUser": spec.uid,
            "runAsGroup": spec.gid,
            "runAsNonRoot": spec.uid != 0,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"],
                             "add": sorted(c.removeprefix("CAP_") for c in spec.capabilities)},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    if ports and spec.network != "host":
        # with the host's network a port is the host's already (podman 4.3 refuses to map it)
        container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
    resources, _ = limits.pod_resources(spec.limits)
    if resources:
        container["resources"] = resources
    # the manifest digest is in the image's labels: podman 4.3 refuses annotation values longer
    # than 63 characters (a label's limit), and a digest is 71
    annotations = {"jailkit.dev/profile": spec.name, "jailkit.dev/generation":
                   str(jail.generation), "jailkit.dev/stop-signal": str(spec.stop_signal)}
    if ports:
        annotations["jailkit.dev/ports"] = ",".join(map(str, ports))
    if spec.pids_max:
        annotations["jailkit.dev/pids-max"] = str(spec.pids_max)
    pod_spec = {
        "hostname": _dns_name(spec.hostname),
        "hostNetwork": spec.network == "host",
        "hostUsers": False,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"},
                            **({"supplementalGroups": spec.groups} if spec.groups else {})},
        "containers": [container],
        "volumes": volumes,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name},
                     "annotations": annotations},
        "spec": pod_spec,
    }


def notes(launch: dict) -> list[str]:
    """What the Pod cannot carry (one line each)."""
    from jailkit.launch.spec import LaunchSpec

    spec = LaunchSpec.from_dict(launch)
    _, lost = limits.pod_resources(spec.limits)
    if spec.binds:
        lost.append("a hostPath volume cannot be nosuid, nodev or noexec: "
                    f"{', '.join(sorted(b.path for b in spec.binds))} mounted without them "
                    "(readOnly is carried; setuid bits stay moot: allowPrivilegeEscalation is "
                    "false)")
    return lost


def pod_yaml(jail: BuiltJail, ports: list[int]) -> str:
    return json.dumps(pod(jail, ports), indent=2) + "\n"
