#!/usr/bin/env python3
"""Assembles an OCI image archive from files on this machine, without Docker or a registry.

  oci_image.py operator BINARY TAG OUT.tar   the Dockerfile's image: the binary, the shared
                                             libraries it links, CA certificates, user 65532
  oci_image.py pause BINARY TAG OUT.tar      the pod sandbox image: a static pause binary

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) with one
uncompressed layer; `ctr images import` loads it under TAG (the index carries the name in the
`io.containerd.image.name` annotation). Layers are reproducible: fixed owners, modes and mtimes.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
NONROOT = 65532
MODEL_IN_IMAGE = "/models/efficientnet-lite0.safetensors"
OPERATOR_BIN = "/usr/local/bin/imagejob-operator"
# distroless/cc's accounts: root, and `nonroot` as 65532 (the chart's runAsUser).
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"


class Layer:
    """A tar layer built in memory with deterministic metadata."""

    def __init__(self):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)
        self.seen = set()

    def _info(self, path, kind, mode, uid=0):
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, uid, 0
        return info

    def directory(self, path, mode=0o755, uid=0):
        parts = Path(path.lstrip("/")).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in self.seen:
                continue
            self.seen.add(sub)
            last = i == len(parts)
            self.tar.addfile(self._info(sub, tarfile.DIRTYPE, mode if last else 0o755, uid if last else 0))

    def file(self, path, data, mode=0o644):
        self.directory(str(Path(path).parent))
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def finish(self):
        self.tar.close()
        return self.buffer.getvalue()


def linked_libraries(binary):
    """The shared libraries `ldd` resolves for BINARY, as (path in image, path on host)."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].split("(")[0].strip()
            if target:
                libs.append((target, target))
        elif line.startswith("/"):
            loader = line.split("(")[0].strip()
            libs.append((loader, loader))
    return libs


def operator_layer(binary):
    layer = Layer()
    layer.directory("/tmp", 0o1777)
    layer.directory("/home/nonroot", 0o700, NONROOT)
    layer.file("/etc/passwd", PASSWD.encode())
    layer.file("/etc/group", GROUP.encode())
    layer.file(CA_BUNDLE, Path(CA_BUNDLE).read_bytes())
    for in_image, on_host in linked_libraries(binary):
        layer.file(in_image, Path(on_host).resolve().read_bytes(), 0o755)
    layer.file(OPERATOR_BIN, Path(binary).read_bytes(), 0o755)
    # The image model's weights (scripts/install-deps.sh): the worker describes images with it.
    layer.file(MODEL_IN_IMAGE, Path(os.environ["IJ_IMAGE_MODEL"]).read_bytes())
    config = {
        "User": f"{NONROOT}:{NONROOT}",
        "Entrypoint": [OPERATOR_BIN],
        "Cmd": ["--help"],
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", f"SSL_CERT_FILE={CA_BUNDLE}",
                f"IMAGE_MODEL_PATH={MODEL_IN_IMAGE}"],
        "WorkingDir": "/home/nonroot",
    }
    return layer.finish(), config


def pause_layer(binary):
    layer = Layer()
    layer.file("/pause", Path(binary).read_bytes(), 0o755)
    return layer.finish(), {"User": "65535:65535", "Entrypoint": ["/pause"]}


def blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def write_archive(layer, runtime_config, tag, out):
    staging = Path(out).with_suffix(".layout")
    blobs = staging / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer_digest, layer_size = blob(blobs, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": runtime_config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "scripts/oci_image.py"}],
    }
    config_digest, config_size = blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": tag, "org.opencontainers.image.ref.name": tag.rsplit(":", 1)[-1]},
        }],
    }
    (staging / "index.json").write_text(json.dumps(index))
    (staging / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    with tarfile.open(out, "w") as archive:
        for path in sorted(staging.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(staging)), recursive=False)
    for path in sorted(staging.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    staging.rmdir()
    print(json.dumps({"tag": tag, "archive": str(out), "manifest": manifest_digest, "layer_bytes": layer_size}))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("operator", "pause"):
        sys.exit(__doc__)
    kind, binary, tag, out = sys.argv[1:]
    layer, runtime_config = (operator_layer if kind == "operator" else pause_layer)(binary)
    write_archive(layer, runtime_config, tag, out)
