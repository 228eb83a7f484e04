"""`--format kube`: a Kubernetes Pod running the image of `--format oci`, whose securityContext
carries the jail's confinement: its user and groups, a read-only root, every capability dropped
but the profile's, no privilege escalation, the runtime's default seccomp profile, no host user
ids (`hostUsers: false`: a user namespace, where the cluster supports it), the tmpfs writable
directories as memory-backed emptyDir volumes, the state directories as PersistentVolumeClaims
(one each, written before the Pod), the live host binds as hostPath volumes (readOnly unless rw:
the node must have the directory), the memory and CPU limits and requests (limits.py), the
ports. A service (a jail with ports or a `ready` check) is restarted whenever it ends, as a
Deployment's Pods are; another command when it fails, as `jailkit unit` does.

Written as a YAML stream of JSON documents (JSON is YAML): no YAML library is needed to write
it, and kubectl and `podman kube play` read it as it is. Kubernetes has no per-container pids
limit (the kubelet's podPidsLimit is per node); the profile's is kept as the annotation
jailkit.dev/pids-max. Nor has a Pod swap, memory.high or I/O weight fields, or noexec/nodev
hostPath mounts: `notes` says so, and what each claim starts without.
"""

import json
import os

from jailkit.export import limits
from jailkit.export.oci import image_name
from jailkit.export.source import BuiltJail
from jailkit.vocabulary import SIGNAL_NAMES

CLAIM_SIZE = "1Gi"  # what a state directory's claim asks for when the profile gives no size


def _dns_name(text: str) -> str:
    """A DNS-1123 label from a profile name (Pod, container and volume names must be)."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return out[:63].rstrip("-") or "jail"


def claims(jail: BuiltJail) -> dict[str, str]:
    """State directory -> the name of its PersistentVolumeClaim: NAME-SOURCE as a DNS-1123
    label, unique in the jail."""
    name, named = _dns_name(jail.run_name), {}
    for w in jail.state_dirs():
        base = _dns_name(f"{name}-{w.source}")
        claim, number = base, 2
        while claim in named.values():  # two sources that differ only in what a label drops
            suffix = f"-{number}"
            claim, number = base[:63 - len(suffix)].rstrip("-") + suffix, number + 1
        named[w.path] = claim
    return named


def _claim(name: str, claim: str, size: int | None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "labels": {"app.kubernetes.io/name": name}},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": str(size) if size else CLAIM_SIZE}}},
    }


def documents(jail: BuiltJail, ports: list[int]) -> list[dict]:
    """The state directories' claims, then the Pod that mounts them."""
    name = _dns_name(jail.run_name)
    sizes = {w.path: w.size for w in jail.state_dirs()}
    return [*(_claim(name, claim, sizes[path]) for path, claim in claims(jail).items()),
            pod(jail, ports)]


def pod(jail: BuiltJail, ports: list[int]) -> dict:
    from jailkit.launch.spec import LaunchSpec

    spec = LaunchSpec.from_dict(jail.launch)
    name = _dns_name(spec.name)
    claimed = claims(jail)
    volumes, mounts = [], []
    for i, w in enumerate(spec.writable):
        volume = f"writable-{i}"
        if w.path in claimed:
            volumes.append({"name": volume,
                            "persistentVolumeClaim": {"claimName": claimed[w.path]}})
        else:
            empty = {"medium": "Memory"}
            if w.size:
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
                   str(jail.generation), "jailkit.dev/stop-signal": SIGNAL_NAMES[spec.stop_signal]}
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
        "restartPolicy": "Always" if ports or spec.ready else "OnFailure",
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


def notes(jail: BuiltJail) -> list[str]:
    """What the Pod cannot carry, and what its claims start without (one line each)."""
    from jailkit.export.notes import owner_hint
    from jailkit.launch.spec import LaunchSpec

    spec = LaunchSpec.from_dict(jail.launch)
    _, lost = limits.pod_resources(spec.limits)
    if spec.binds:
        lost.append("a hostPath volume cannot be nosuid, nodev or noexec: "
                    f"{', '.join(sorted(b.path for b in spec.binds))} mounted without them "
                    "(readOnly is carried; setuid bits stay moot: allowPrivilegeEscalation is "
                    "false)")
    claimed = claims(jail)
    for w in jail.state_dirs():
        lost.append(f"state directory {w.path}: its files stay in "
                    f"{os.path.join(jail.dir, 'state', w.source)}, not in the image: the Pod "
                    f"mounts the PersistentVolumeClaim {claimed[w.path]} there, empty until you "
                    f"copy them in{owner_hint(w)}")
    return lost


def pod_yaml(jail: BuiltJail, ports: list[int]) -> str:
    """The claims and the Pod as one YAML stream: each a JSON document after `---`."""
    return "".join(f"---\n{json.dumps(document, indent=2)}\n"
                   for document in documents(jail, ports))
