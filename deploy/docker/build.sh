#!/usr/bin/env bash
# Builds the Know Your Bands images here, with no registry that serves base images:
#
#   1. a Debian bookworm root file system made with debootstrap (Python 3.11, the interpreter the
#      torch wheels are built for), `docker import`ed as kyb-base:bookworm (skipped when it exists);
#   2. the cpu and cuda targets of deploy/docker/Dockerfile FROM that base, torch (and for cuda,
#      torchvision and the nvidia-* wheels) installed from wheels on this machine's disk, hard-linked
#      into build/docker-wheels/<target>/ with the few small wheels they need besides (pip download),
#      and bind-mounted by the build (never a layer of their own; installed with --no-index).
#
#   bash deploy/docker/build.sh [cpu|cuda|base ...]     (default: cpu cuda; KYB_IMAGE_TAG, default 0.1.0)
#
# KYB_BUILD_CA: the CA bundle pip uses inside the build (default this machine's), a build secret.
# Wheel folders: KYB_WHEEL_DIRS (default: the folders pip's configuration on this machine reads,
# its find-links and local indexes). Runs as root (debootstrap, the Docker socket).
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG=${KYB_IMAGE_TAG:-0.1.0}
BASE=${KYB_BASE_IMAGE:-kyb-base:bookworm}
DOCKER=${DOCKER:-docker}
# A newer docker CLI hands BuildKit builds to the buildx plugin; without it, Debian's own client
# (docker.io) drives the daemon's built-in BuildKit directly.
if ! "$DOCKER" buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then
    DOCKER=/usr/bin/docker
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(cpu cuda)

log() { echo "build.sh: $*" >&2; }

# pip of this machine (its configuration says where the local wheels are); the project's venv when present.
PIP=${PIP:-$([ -x .venv/bin/pip ] && echo .venv/bin/pip || echo "python3 -m pip")}

build_base() {
    if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
        log "$BASE exists"
        return
    fi
    command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install debootstrap"; exit 2; }
    local root
    root=$(mktemp -d /var/tmp/kyb-base.XXXXXX)
    trap 'rm -rf "$root"' RETURN
    log "debootstrap bookworm into $root"
    # minbase: dpkg, apt and essentials only; the image adds what each stage needs.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" >&2
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*
    tar --numeric-owner -C "$root" -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    log "imported $BASE"
}

# Hard-links (or copies) the wheels matching the patterns from this machine's wheel folders into
# build/docker-wheels/<target>/, the folder the Dockerfile bind-mounts; prints the torch version.
stage_wheels() {
    local target=$1; shift
    local into=build/docker-wheels/$target pattern found
    rm -rf "$into" && mkdir -p "$into"
    for pattern in "$@"; do
        found=$(find ${KYB_WHEEL_DIRS:-/opt/wheels /opt/pypi/files /opt/pypi-more/files} -maxdepth 1 \
            -name "$pattern" 2>/dev/null | sort)
        [ -n "$found" ] || { log "no wheel $pattern on this machine (KYB_WHEEL_DIRS names the folders)"; exit 2; }
        for wheel in $found; do
            ln -f "$wheel" "$into/" 2>/dev/null || cp "$wheel" "$into/"
        done
    done
}

# Completes a staged folder with every other wheel the requirements need (small ones: sympy, triton,
# cuda-bindings, ...; pip skips the files already there), so the image installs with --no-index.
complete_wheels() {
    local target=$1; shift
    "$PIP" download --quiet --only-binary=:all: --dest "build/docker-wheels/$target" \
        --find-links "build/docker-wheels/$target" "$@" >&2
}

build_target() {
    local target=$1 torch torchvision="" name
    case $target in
        cpu)
            stage_wheels cpu 'torch-*+cpu-cp311-*.whl'
            torch=$(basename "$(ls build/docker-wheels/cpu/torch-*.whl | sort | tail -n1)" | cut -d- -f2)
            complete_wheels cpu "torch==$torch"
            name=kyb ;;
        cuda)
            torch=${KYB_CUDA_TORCH:-2.14.1} torchvision=${KYB_CUDA_TORCHVISION:-0.29.1}
            # torch's CUDA build with the nvidia-* wheels it pins (the GBs); small dependencies come from the index.
            stage_wheels cuda "torch-$torch-cp311-*.whl" "torchvision-$torchvision-cp311-*.whl" 'nvidia_*.whl'
            complete_wheels cuda "torch==$torch" "torchvision==$torchvision"
            name=kyb-cuda ;;
        *) log "unknown target $target (cpu, cuda, base)"; exit 2 ;;
    esac
    log "$name:$TAG (target $target, torch $torch${torchvision:+, torchvision $torchvision})"
    local started=$SECONDS
    local ca=${KYB_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}
    DOCKER_BUILDKIT=1 "$DOCKER" build -f deploy/docker/Dockerfile --target "$target" \
        ${ca:+$([ -s "$ca" ] && echo "--secret id=ca,src=$ca")} \
        --build-arg "BASE_IMAGE=$BASE" --build-arg "TORCH_VERSION=$torch" \
        ${torchvision:+--build-arg "TORCHVISION_VERSION=$torchvision"} -t "$name:$TAG" .
    log "$name:$TAG built in $((SECONDS - started)) s: $("$DOCKER" image inspect -f '{{.Size}}' "$name:$TAG") bytes"
}

build_base
for target in "${targets[@]}"; do
    [ "$target" = base ] || build_target "$target"
done
