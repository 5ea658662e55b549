#!/usr/bin/env bash
# Backs up and restores what Know Your Bands keeps: the Postgres catalog (pg_dump, custom format)
# and index folders (the generation CURRENT names, plus CURRENT; generations are immutable once
# named, so copying one while a writer saves the next is consistent).
#
#   deploy/backup.sh backup  CATALOG_URL OUT_DIR INDEX_DIR...    # catalog.dump + one .tar per index folder
#   deploy/backup.sh restore CATALOG_URL IN_DIR  INDEX_DIR...    # into an EMPTY database and empty folders
#
# Index folders are restored in the order given (the same order as at backup). For a matched pair,
# stop writes (ingest, delete) while both are taken; otherwise the catalog may name a reference the
# index copy lacks (it is then simply not found) or the reverse (found, without metadata).
# On Kubernetes, run it where the folders are mounted (deploy/README.md, "Back up and restore").
set -euo pipefail

usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
action=$1 catalog=$2 dir=$3
shift 3

case "$action" in
backup)
    mkdir -p "$dir"
    pg_dump --format=custom --no-owner --file "$dir/catalog.dump" "$catalog"
    k=0
    for index in "$@"; do
        current=$(cat "$index/CURRENT")
        # CURRENT last in the archive: a restore that stops half-way leaves no pointer to a missing generation.
        tar -C "$index" -cf "$dir/index-$k.tar" "$current" CURRENT
        echo "index $index: $current -> $dir/index-$k.tar"
        k=$((k + 1))
    done
    echo "catalog -> $dir/catalog.dump"
    ;;
restore)
    for index in "$@"; do
        if [ -e "$index/CURRENT" ]; then
            echo "refusing to restore into $index: it already holds an index" >&2
            exit 1
        fi
    done
    pg_restore --no-owner --exit-on-error --dbname "$catalog" "$dir/catalog.dump"
    k=0
    for index in "$@"; do
        mkdir -p "$index"
        tar -C "$index" -xf "$dir/index-$k.tar"
        echo "index $dir/index-$k.tar -> $index ($(cat "$index/CURRENT"))"
        k=$((k + 1))
    done
    ;;
*)
    usage
    ;;
esac
