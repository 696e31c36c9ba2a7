#!/usr/bin/env bash
# The release build's hot-code order (crates/muslin/hot-code.order): every
# function of the binary that an agent runs, from a cold start through
# joining, attaching containers, answering the lab's checks and idling,
# and after a restart. The release build links those functions first and
# together (crates/muslin/build.rs), so an agent's resident code is about
# their size and not the whole binary's.
#
#   scripts/hot-code-order.sh --check   # is the order in force, and how much of it names this build
#   sudo scripts/hot-code-order.sh      # rewrite the file (about ten minutes, on an idle machine)
#
# Rewrite it after changes that rename many symbols (a new rustc, a
# `cargo update`, a new workspace version, big refactors): `--check` says
# when. Symbols the file names but the build lacks are skipped by the
# linker, so a stale file costs resident memory, not a failed link.
# Both leave target/release/muslin as `cargo build --release` makes it.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

mode=write
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

order=crates/muslin/hot-code.order
work=$(mktemp -d /tmp/muslin-hot-code.XXXXXX)
bin=$work/muslin
labs=()
relinked=no
relink() {
  env -u MUSLIN_KEEP_SYMBOLS -u MUSLIN_NO_CODE_ORDER cargo build --release --locked -p muslin
  relinked=yes
}
cleanup() {
  if pgrep -f "$bin agent --node-name" >/dev/null; then
    pkill -TERM -f "$bin agent --node-name" || true
    sleep 2
    pkill -KILL -f "$bin" || true
  fi
  for l in "${labs[@]}"; do "$bin" lab down --name "$l" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  # Never leave the symbols build where the shipped one is expected.
  [ "$relinked" = yes ] || relink >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The same symbols as `cargo build --release` makes, kept in the binary:
# cargo hashes the profile into symbol names, so only this build names them.
MUSLIN_KEEP_SYMBOLS=1 cargo build --release --locked -p muslin
cp target/release/muslin "$bin"
# name, address, size (decimal) of every function
nm -S -t d --defined-only "$bin" | awk 'NF == 4 && $3 ~ /^[tTwW]$/ { print $4, $1, $2 }' | sort -u >"$work/functions"

if [ "$mode" = check ]; then
  relink
  sort -u "$order" | join - "$work/functions" >"$work/known"
  total=$(sort -u "$order" | wc -l)
  known=$(cut -d' ' -f1 "$work/known" | sort -u | wc -l)
  # In force: the known functions lie together, spanning little more than
  # their own sizes (plain order scatters them over the whole text).
  read -r span sum < <(awk '{ a = $2 + 0; e = a + $3; s += $3
      if (lo == "" || a < lo) lo = a; if (e > hi) hi = e } END { printf "%d %d\n", hi - lo, s }' "$work/known")
  echo "$known of $total functions in $order are in this build; they span $((span / 1024)) KiB of text, their own size $((sum / 1024)) KiB"
  if [ "$known" -eq 0 ] || [ $((span * 10)) -gt $((sum * 12)) ]; then
    echo "the hot-code order is not in force in this build (see crates/muslin/build.rs)" >&2
    exit 1
  fi
  if [ $((known * 100)) -lt $((total * 95)) ]; then
    echo "warning: $order is stale (renamed symbols lose their place): run sudo $0" >&2
  fi
  exit 0
fi

command -v valgrind >/dev/null || {
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q valgrind
}
callgrind=(valgrind --tool=callgrind --demangle=no)

# The pid of a running agent, and its command line (without valgrind's,
# if under it) in a file.
agent_args() {
  local lab=$1 host=$2 pid
  pid=$(pgrep -f "$bin agent --node-name $host --socket /run/muslin/lab/$lab/" | head -1)
  if [ -z "$pid" ]; then
    echo "no agent $host in lab $lab" >&2
    return 1
  fi
  tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n "\|^$bin\$|,\$p" >"$work/args.$lab-$host"
  echo "$pid"
}

# Runs an agent under callgrind with the arguments it had, lets it idle,
# and stops it so that callgrind writes its record.
run_traced() {
  local lab=$1 host=$2 secs=$3 args
  mapfile -t args <"$work/args.$lab-$host"
  ip netns exec "$lab-$host" "${callgrind[@]}" --callgrind-out-file="$work/cg.$lab-$host.out" \
    "${args[@]}" >>"/run/muslin/lab/$lab/$host/agent.log" 2>&1 &
  sleep "$secs"
  kill -TERM $! 2>/dev/null || true
  wait $! || true
  if [ ! -s "$work/cg.$lab-$host.out" ]; then
    echo "the traced agent $host left no record (see /run/muslin/lab/$lab/$host/agent.log)" >&2
    return 1
  fi
}

stop() {
  local i
  kill -TERM "$1"
  for i in $(seq 300); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "agent $1 did not stop" >&2
  return 1
}

# 1. A small lab whose agents run under callgrind from their first
#    instruction: first start, block claims, container attachment, checks.
lab=hco$$a
labs+=("$lab")
"${callgrind[@]}" --trace-children=yes \
  --trace-children-skip='*/nft,*/sh,*/bash,*/sysctl,*/modprobe,*/iperf3,*/etcd' \
  --callgrind-out-file="$work/cg.%p.out" \
  "$bin" lab up --name "$lab" --hosts 3 --converge-timeout 900 >"$work/up-a.log" 2>&1
sleep 60
agent_args "$lab" h2 >/dev/null
pkill -TERM -f "$bin agent --node-name" || true
for _ in $(seq 600); do
  pgrep -f "$bin agent --node-name" >/dev/null || break
  sleep 0.5
done
#    ... and one of them again, restarted over its state.
run_traced "$lab" h2 60
"$bin" lab down --name "$lab" >/dev/null 2>&1

# 2. A bigger lab (relays, many peers), with one agent restarted traced.
lab=hco$$b
labs+=("$lab")
"$bin" lab up --name "$lab" --hosts 30 --converge-timeout 600 >"$work/up-b.log" 2>&1
pid=$(agent_args "$lab" h7)
stop "$pid"
run_traced "$lab" h7 120
"$bin" lab down --name "$lab" >/dev/null 2>&1

# Only the agents' records: the lab and plugin processes are not agents.
records=$(grep -l '^cmd: .* agent --node-name' "$work"/cg.*.out)
# shellcheck disable=SC2086
grep -ohE '^c?fn=\([0-9]+\) .*' $records | sed -E 's/^c?fn=\([0-9]+\) //' | sort -u >"$work/ran"
# In their order in this build: the file's previous order, then what is
# new in the compiler's order.
join "$work/ran" "$work/functions" | sort -k2,2n | cut -d' ' -f1 >"$order.new"
mv "$order.new" "$order"
relink
echo "$(wc -l <"$order") functions written to $order"
