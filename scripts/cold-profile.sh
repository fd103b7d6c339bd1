#!/usr/bin/env bash
# Where a cold 1 GiB pull's CPU goes, for any regcache build (BENCHMARKS.md,
# "The cold path profiled"): Debian nginx serves a 1 GiB blob as the origin on
# 127.0.0.1:18600, the build under test runs on 127.0.0.1:18601 with a fresh
# data directory, `perf record --call-graph fp -p` samples it during one curl
# pull, and the samples are split by step. Build with frame pointers and line
# tables for names in the report:
#   CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
#   RUSTFLAGS=-Cforce-frame-pointers=yes cargo build --release --bin regcache
# Usage: scripts/cold-profile.sh WORKDIR NAME=BIN [NAME=BIN ...]   (runs interleaved)
set -euo pipefail
work=$1
shift
mkdir -p "$work/www/v2/app/blobs"
if [ ! -f "$work/hex" ]; then
    head -c 1073741824 /dev/urandom > "$work/blob"
    sha256sum "$work/blob" | cut -d' ' -f1 > "$work/hex"
    mv "$work/blob" "$work/www/v2/app/blobs/sha256:$(cat "$work/hex")"
fi
hex=$(cat "$work/hex")
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:18600;
    root $work/www;
    location = /v2/ { return 200 ''; }
  }
}
EOF
nginx -c "$work/nginx.conf"
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT

step() { # the share of the server's samples under a symbol (children included)
    grep -E "$1" "$work/report.txt" | head -1 | awk '{print $1}'
}

curl -s -o /dev/null -w "direct from nginx: %{time_total} s\n" "http://127.0.0.1:18600/v2/app/blobs/sha256:$hex"
for run in "$@"; do
    name=${run%%=*}
    bin=${run#*=}
    data="$work/data-$name"
    rm -rf "$data"
    mkdir -p "$data"
    cat > "$data.toml" <<EOF
[server]
listen = "127.0.0.1:18601"
[storage]
data_dir = "$data"
max_size = "20GB"
[[upstream]]
name = "origin.test"
url = "http://127.0.0.1:18600"
default = true
EOF
    "$bin" serve --config "$data.toml" > "$data.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:18601/readyz > /dev/null && break; sleep 0.1; done
    perf record -F 1999 --call-graph fp -p "$server" -o "$work/perf-$name.data" 2> /dev/null &
    perf=$!
    sleep 1
    curl -s -o /dev/null -w "$name: %{http_code}, %{size_download} B in %{time_total} s" \
        "http://127.0.0.1:18601/v2/app/blobs/sha256:$hex"
    sleep 0.5
    kill -INT "$perf"
    wait "$perf" || true
    echo ", server CPU $(awk '{print ($14 + $15) / 100}' "/proc/$server/stat") s"
    kill "$server"
    wait "$server" || true
    server=
    rm -rf "$data"
    perf report -i "$work/perf-$name.data" --children --sort sym --stdio 2> /dev/null |
        grep -E '^ +[0-9]' > "$work/report.txt"
    copy=$(perf report -i "$work/perf-$name.data" --no-children --sort sym --stdio 2> /dev/null |
        grep -E 'copy_folio_from_iter_atomic' | head -1 | awk '{print $1}')
    echo "  sha256 $(step 'sha2::sha256::x86::digest_blocks') | write to temp file" \
        "$(step '\] ext4_buffered_write_iter') (copy into the page cache $copy) |" \
        "send to client $(step '\] tcp_sendmsg$') | recv from upstream $(step '\] tcp_recvmsg$') |" \
        "fdatasync $(step '\] ext4_sync_file') | task switches $(step 'finish_task_switch')"
done
