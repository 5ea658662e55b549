#!/usr/bin/env bash
# Runs the split stack from the cpu image as containers, as the Kubernetes manifests run it:
# Postgres, Redis, encoder, two matcher shards, gateway and web front on their own network, every
# service as uid 10001 with a read-only root file system (only /tmp, /data and /builds writable),
# configured by deploy/k8s/base/common/config.env plus the few values a two-shard stack changes.
#
#   bash deploy/docker/smoke.sh                 the whole smoke test (tests/deploy/test_docker_smoke.py):
#                                               ingest the demo catalog through the gateway, identify the
#                                               demo photos over HTTP and gRPC, compare with embedded, stop
#   bash deploy/docker/smoke.sh up DEMO_DIR     start it over a demo set (kyb demo's folder); prints
#                                               gateway=HOST:PORT and web=URL
#   bash deploy/docker/smoke.sh down            SIGTERM every service, print each exit code (all 0 or
#                                               this exits 1), remove containers, network and volumes
#
# KYB_IMAGE (default kyb:0.1.0, built by deploy/docker/build.sh cpu), KYB_SMOKE_PREFIX (default
# kyb-smoke: names of the containers, network and volumes).
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${KYB_IMAGE:-kyb:0.1.0}
P=${KYB_SMOKE_PREFIX:-kyb-smoke}
DATASTORES=kyb-smoke-datastores:bookworm
SERVICES=(encoder matcher-0 matcher-1 gateway web)
DOCKER=${DOCKER:-docker}

log() { echo "smoke.sh: $*" >&2; }

# What every service container shares: the manifests' security context and configuration.
run_service() {
    local name=$1; shift
    "$DOCKER" run -d --name "$P-$name" --hostname "$name" --network "$P" --network-alias "$name" \
        --read-only --tmpfs /tmp:rw,size=256m --cap-drop ALL --security-opt no-new-privileges \
        --env-file deploy/k8s/base/common/config.env \
        -e KYB_GATEWAY__SHARDS=2 -e KYB_MATCHER__SHARD=auto/2 \
        -e "KYB_GATEWAY__MATCHER_ADDRESSES=matcher-{k}:50053" -e KYB_GATEWAY__DETECTOR_ADDRESS= \
        -e KYB_CATALOG_URL=postgresql://postgres@postgres/postgres \
        -e KYB_CACHE__URL=redis://redis:6379/0 -e KYB_RPC__GRACE_S=5 \
        "$@" >/dev/null
}

up() {
    local demo=${1:?usage: smoke.sh up DEMO_DIR}
    demo=$(cd "$demo" && pwd)
    "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || { log "no image $IMAGE: bash deploy/docker/build.sh cpu"; exit 2; }
    # Built every time: a no-op from the cache unless its Dockerfile changed.
    "$DOCKER" build -q -f deploy/docker/smoke/datastores.Dockerfile -t "$DATASTORES" deploy/docker/smoke >/dev/null
    "$DOCKER" network create "$P" >/dev/null
    "$DOCKER" run -d --name "$P-postgres" --network "$P" --network-alias postgres "$DATASTORES" >/dev/null
    "$DOCKER" run -d --name "$P-redis" --network "$P" --network-alias redis --user redis "$DATASTORES" \
        redis-server --bind 0.0.0.0 --protected-mode no --save "" >/dev/null
    until "$DOCKER" exec "$P-postgres" pg_isready -q -h 127.0.0.1; do sleep 0.5; done

    # The jobs of deploy/k8s/base/jobs: schema migration, then an index build whose codebook the
    # encoder and the (empty) shards start with; the references themselves go in through the gateway.
    local job=(--rm --network "$P" --read-only --tmpfs /tmp --env-file deploy/k8s/base/common/config.env
               -e KYB_CATALOG_URL=postgresql://postgres@postgres/postgres -v "$P-builds:/builds")
    "$DOCKER" run "${job[@]}" "$IMAGE" db migrate >&2
    # The demo set goes into the builds volume, readable by the service user (the caller's folder may not be).
    "$DOCKER" run --rm --user 0 --entrypoint sh -v "$demo:/demo:ro" -v "$P-builds:/builds" "$IMAGE" \
        -c 'cp -r /demo /builds/demo && chmod -R a+rX /builds/demo'
    "$DOCKER" run "${job[@]}" "$IMAGE" ingest /builds/demo/catalog.json \
        --index-dir /builds/build-1/index --catalog /builds/build-1/catalog.db --log-level WARNING >&2

    # Internal ports are published on loopback too, so the caller can wait for their health checks.
    run_service encoder -p 127.0.0.1::50052 -v "$P-builds:/builds:ro" "$IMAGE" serve encoder
    for k in 0 1; do
        run_service "matcher-$k" -p 127.0.0.1::50053 -v "$P-builds:/builds:ro" -v "$P-shard-$k:/data" \
            "$IMAGE" serve matcher
    done
    run_service gateway -p 127.0.0.1::50051 "$IMAGE" serve gateway
    run_service web -p 127.0.0.1::8080 "$IMAGE" serve web
    echo "encoder=$("$DOCKER" port "$P-encoder" 50052/tcp | head -n1)"
    echo "matcher-0=$("$DOCKER" port "$P-matcher-0" 50053/tcp | head -n1)"
    echo "matcher-1=$("$DOCKER" port "$P-matcher-1" 50053/tcp | head -n1)"
    echo "gateway=$("$DOCKER" port "$P-gateway" 50051/tcp | head -n1)"
    echo "web=http://$("$DOCKER" port "$P-web" 8080/tcp | head -n1)"
}

down() {
    local failed=0 name code
    for name in "${SERVICES[@]}"; do
        "$DOCKER" container inspect "$P-$name" >/dev/null 2>&1 || continue
        "$DOCKER" stop -t 30 "$P-$name" >/dev/null  # SIGTERM, then 30 s to finish in-flight calls
        code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$P-$name")
        echo "$name exit $code"
        [ "$code" = 0 ] || { failed=1; "$DOCKER" logs --tail 20 "$P-$name" >&2 || true; }
    done
    for name in "${SERVICES[@]}" postgres redis; do
        "$DOCKER" rm -f "$P-$name" >/dev/null 2>&1 || true
    done
    "$DOCKER" network rm "$P" >/dev/null 2>&1 || true
    "$DOCKER" volume rm "$P-builds" "$P-shard-0" "$P-shard-1" >/dev/null 2>&1 || true
    return $failed
}

case ${1:-check} in
    up) shift; up "$@" ;;
    down) down ;;
    check) exec "${PYTHON:-.venv/bin/python}" -m pytest -q -p no:cacheprovider tests/deploy/test_docker_smoke.py ;;
    *) log "usage: smoke.sh [check | up DEMO_DIR | down]"; exit 2 ;;
esac
