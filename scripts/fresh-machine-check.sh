#!/usr/bin/env bash
# Checks that the README's two commands work on a machine that has nothing but Debian 12: builds a minimal
# Debian 12 root with debootstrap, copies a clean clone of this repository's HEAD into it (/root/tessera) and
# runs scripts/test.sh (CI=true) and then scripts/demo.sh inside it with chroot, as root, so that setup.sh has to
# install everything they need. Prints how long each step took and ends with a one-line summary; exits non-zero
# when either command fails.
#
# Slow (debootstrap 1.5 minutes, setup.sh's packages several more, test.sh 30+ minutes on 2 cores): run it by
# hand after changing the set-up, never from CI or scripts/test.sh. Needs root (debootstrap, mount, chroot).
#
#   scripts/fresh-machine-check.sh [--root DIR] [--keep] [--base-cache] [--only setup] [--uncommitted]
#
#   --root DIR      where the Debian root goes (default out/fresh-root); removed and made anew on each run
#   --keep          keep the root afterwards (enter it with: chroot DIR /bin/bash, after mounting /proc etc.)
#   --base-cache    reuse out/fresh-base-bookworm-minbase.tar, the untouched debootstrap result (made on the
#                   first run with this flag), instead of running debootstrap again
#   --only setup    run only scripts/setup.sh and the CMake configure step (a quick check of set-up changes)
#   --uncommitted   check the working tree as `git add -A` would commit it: apply the uncommitted changes
#                   (git diff HEAD) and copy the untracked, not ignored files onto the clone; by default only
#                   committed work is checked
#
# Output of each step also goes to out/fresh-check-logs/. TESSERA_JOBS, the PIP_* variables and proxy variables
# are passed into the root; nothing else of this machine's environment is.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
root=$repo/out/fresh-root
keep=0 base_cache=0 only="" uncommitted=0
usage() { sed -n '11,20p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --keep) keep=1; shift ;;
    --base-cache) base_cache=1; shift ;;
    --only) only=${2:?--only needs a step}; shift 2 ;;
    --only=*) only=${1#--only=}; shift ;;
    --uncommitted) uncommitted=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fresh-machine-check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -z $only || $only == setup ]] || { echo "fresh-machine-check: --only takes 'setup', not '$only'" >&2; exit 2; }

say() { echo "fresh-machine-check: $*"; }
die() { echo "fresh-machine-check: $*" >&2; exit 1; }
fmt() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, mount and chroot); run it as root"
for tool in chroot mount umount git tar setsid flock; do
  command -v "$tool" >/dev/null || die "'$tool' is missing on this machine"
done

# The root: an absolute path, never / or anything holding the repository; a folder that exists must be empty or
# one this script made (its marker file), so that a wrong --root cannot delete anything else.
root=$(realpath -m "$root")
marker=.fresh-machine-check-root
[[ $root != / && $root != *[[:space:]]* ]] || die "refusing --root '$root'"
[[ $repo != "$root" && $repo != "$root"/* ]] || die "refusing --root '$root': it holds the repository"
[[ ! -e $root || -d $root ]] || die "refusing --root '$root': not a folder"
if [[ -d $root && -n $(ls -A "$root") && ! -e $root/$marker ]]; then
  die "refusing --root '$root': it is not empty and was not made by this script"
fi
logs=$repo/out/fresh-check-logs
cache=$repo/out/fresh-base-bookworm-minbase.tar
mkdir -p "$logs" "$(dirname "$root")"
exec 9>"$root.lock"
flock -n 9 || die "another fresh-machine check is using $root"
rm -f "$logs"/*.log

# --- this machine's Debian mirror ----------------------------------------------------------------------------
# Prints "URI SUITE COMPONENTS..." for each enabled deb entry of the apt sources, in one-line form
# (sources.list, *.list) and deb822 form (*.sources).
apt_entries() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    sed 's/#.*//' "$f" | awk '$1 == "deb" { sub(/^[ \t]*deb[ \t]+/, ""); sub(/^\[[^]]*\][ \t]*/, ""); print }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk '
      function add(k, v) {
        if (k == "types") types = types " " v; else if (k == "uris") uris = uris " " v
        else if (k == "suites") suites = suites " " v; else if (k == "components") comps = comps " " v
        else if (k == "enabled") { gsub(/[ \t]/, "", v); enabled = tolower(v) }
      }
      function flush(  n, m, i, j, U, S) {
        if ((" " types " ") ~ /[ \t]deb[ \t]/ && enabled != "no") {
          gsub(/[ \t]+/, " ", comps); sub(/^ /, "", comps)
          n = split(uris, U, " "); m = split(suites, S, " ")
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print U[i], S[j], comps
        }
        types = uris = suites = comps = enabled = key = ""
      }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { add(key, $0); next }
      { i = index($0, ":"); if (i) { key = tolower(substr($0, 1, i - 1)); add(key, substr($0, i + 1)) } }
      END { flush() }' "$f"
  done
}
# Debian 12's own suites as a fresh machine has them (the release, its updates and security); not backports or
# other vendors' repositories.
mapfile -t entries < <(apt_entries | awk '$2 ~ /^bookworm(-updates|-security)?$/ && !seen[$1 " " $2]++')
mirror=$(printf '%s\n' "${entries[@]}" | awk '$2 == "bookworm" { print $1; exit }')
[[ -n $mirror ]] || die "no 'deb ... bookworm' entry in this machine's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/)"

# --- clean-up: whatever happens, nothing of ours runs in the root and nothing stays mounted under it -----------
job="" tailer="" step="" step_start=0 done_clean=0 root_ours=0
procs_in_root() {
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    [[ $r == "$root" || $r == "$root"/* ]] && echo "${p#/proc/}"
  done
  return 0
}
mounts_in_root() { awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r; }
release_root() {
  local - pids i m
  set +e
  if [[ -n $job ]]; then kill -TERM -- "-$job" 2>/dev/null; fi
  pids=$(procs_in_root)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086  # one pid a word
    kill -TERM $pids 2>/dev/null
    for i in 1 2 3 4 5 6 7 8 9 10; do [[ -z $(procs_in_root) ]] && break; sleep 0.5; done
    pids=$(procs_in_root)
    # shellcheck disable=SC2086
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null
    sleep 0.2
  fi
  if [[ -n $job ]]; then kill -KILL -- "-$job" 2>/dev/null; wait "$job" 2>/dev/null; job=""; fi
  if [[ -n $tailer ]]; then wait "$tailer" 2>/dev/null; tailer=""; fi
  for i in 1 2 3; do
    for m in $(mounts_in_root); do umount "$m" 2>/dev/null || ((i < 3)) || umount -l "$m" 2>/dev/null; done
    [[ -z $(mounts_in_root) ]] && break
    sleep 1
  done
  if [[ -n $(mounts_in_root) ]]; then
    echo "fresh-machine-check: still mounted under $root:" >&2; mounts_in_root >&2; return 1
  fi
}
remove_root() {
  release_root || { echo "fresh-machine-check: not removing $root (mounts left)" >&2; return 1; }
  rm -rf --one-file-system "$root"
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT
  trap '' INT TERM HUP      # clean-up is short and must not be cut off
  set +e
  ((done_clean || !root_ours)) && exit "$rc"
  if [[ -n $step ]]; then
    say "$step stopped after $(fmt $(($(date +%s) - step_start))) (exit $rc)" >&2
  fi
  if ((keep)); then release_root; say "kept $root" >&2; else remove_root; fi
  [[ -n $(mounts_in_root) ]] || say "nothing left mounted under $root" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'echo; say "interrupted" >&2; exit 130' INT
trap 'say "terminated" >&2; exit 143' TERM
trap 'say "hung up" >&2; exit 129' HUP

# run_step NAME LOG SHOW PROGRAM ARGS...: runs the program in a session of its own (so that an interrupt can end
# all of it), its output in LOG and, when SHOW is 1, on the terminal too; sets step_rc and step_s. Waiting with
# `wait` lets a signal to this script act at once instead of after the program ends.
run_step() {
  local name=$1 log=$2 show=$3; shift 3
  step=$name step_start=$(date +%s) step_rc=0
  : >"$log"
  setsid "$@" </dev/null >"$log" 2>&1 &
  job=$!
  if ((show)); then tail -n +1 -f --pid="$job" "$log" & tailer=$!; fi
  wait "$job" || step_rc=$?
  job=""
  if [[ -n $tailer ]]; then wait "$tailer" || true; tailer=""; fi
  step_s=$(($(date +%s) - step_start)) step=""
  if ((step_rc != 0 && !show)); then tail -n 30 "$log" >&2; fi
  return 0
}

# --- a fresh root: debootstrap, or the untouched debootstrap result cached by an earlier run ----------------------
root_ours=1
remove_root || die "cannot clear $root"
mkdir -p "$root"
touch "$root/$marker"
say "Debian 12 minbase root in $root (mirror from this machine's apt sources)"
base_how=debootstrap
if ((base_cache)) && [[ -f $cache && $(cat "$cache.mirror" 2>/dev/null) == "$mirror" ]]; then
  base_how="base from cache"
  run_step "$base_how" "$logs/debootstrap.log" 0 \
    tar -xpf "$cache" --numeric-owner --xattrs --xattrs-include='*' -C "$root"
else
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap on this machine"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  fi
  run_step debootstrap "$logs/debootstrap.log" 0 debootstrap --variant=minbase bookworm "$root" "$mirror"
  if ((step_rc == 0 && base_cache)); then
    tar -cpf "$cache.tmp" --numeric-owner --xattrs --xattrs-include='*' --exclude="./$marker" -C "$root" . &&
      mv "$cache.tmp" "$cache" && echo "$mirror" >"$cache.mirror" && say "cached the base root in $cache"
  fi
fi
((step_rc == 0)) || die "$base_how failed (exit $step_rc; log: $logs/debootstrap.log)"
base_s=$step_s
say "$base_how took $(fmt "$base_s")"

# --- what a fresh Debian 12 cloud or server machine has and minbase lacks, as far as the two commands care -------
# Kept minimal on purpose: setup.sh must install everything else, python3 and its venv included.
#  * apt sources: the machine's Debian 12 suites (release, updates, security), as on any installed machine.
#  * /etc/resolv.conf and /etc/hosts (localhost): DNS and loopback names, which every installed machine has.
#  * ca-certificates: on every Debian cloud image; with this machine's extra CAs from
#    /usr/local/share/ca-certificates (merged by update-ca-certificates when the package is installed) it is how
#    pip reaches PyPI here (PIP_CERT names its bundle).
#  * a local folder named by PIP_FIND_LINKS, copied as it is (part of this machine's pip set-up).
# Not added: sudo (setup.sh runs as root here and then uses no sudo), git (the clone is made outside and copied
# in; nothing in the build or tests calls git), python3 (setup.sh's python3-venv brings it), locales (C.UTF-8 is
# built into Debian 12's libc).
prepare_root() {
  local entry uri suite comps path
  for entry in "${entries[@]}"; do
    read -r uri suite comps <<<"$entry"
    echo "deb $uri $suite ${comps:-main}"
  done >"$root/etc/apt/sources.list"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  [[ -s $root/etc/hosts ]] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  if [[ -d /usr/local/share/ca-certificates ]]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
  fi
  for path in ${PIP_FIND_LINKS:-}; do
    if [[ $path == /* && -d $path && ! -e $root$path ]]; then mkdir -p "$root$path" && cp -a "$path/." "$root$path/"; fi
  done
}
chroot_env=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 "TERM=${TERM:-dumb}"
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
while IFS= read -r -d '' kv; do
  case ${kv%%=*} in
    PIP_*|TESSERA_JOBS|http_proxy|https_proxy|ftp_proxy|no_proxy|all_proxy|HTTP_PROXY|HTTPS_PROXY|FTP_PROXY|NO_PROXY|ALL_PROXY)
      chroot_env+=("$kv") ;;
  esac
done < <(env -0)
chroot_bin=$(command -v chroot)
# in_root [VAR=VALUE...] -- COMMAND: sets argv to the command line that runs a shell command in the root with a
# clean environment (the signals that background jobs of a script ignore get their default action back).
in_root() {
  local extra=()
  while [[ $1 != -- ]]; do extra+=("$1"); shift; done
  shift
  argv=(env -i "--default-signal=INT,QUIT" "${chroot_env[@]}" "${extra[@]}" "$chroot_bin" "$root" /bin/bash -c "$1")
}
mount_root() {
  mount -t proc proc "$root/proc" || return
  mount -t sysfs sysfs "$root/sys" || return
  mount --bind /dev "$root/dev" || return
  mount --make-private "$root/dev" || return     # mounts below it must not propagate to this machine's /dev
  mount --bind /dev/pts "$root/dev/pts" || return
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
}
mount_root || die "mounting /proc, /sys, /dev into $root failed"
prepare_root
in_root DEBIAN_FRONTEND=noninteractive -- \
  'set -e; apt-get update -qq; apt-get install -y -qq --no-install-recommends ca-certificates; apt-get clean'
run_step prepare "$logs/prepare.log" 0 "${argv[@]}"
((step_rc == 0)) || die "installing ca-certificates in the root failed (log: $logs/prepare.log)"
if [[ -n ${PIP_CERT:-} && ! -e $root$PIP_CERT && -f $PIP_CERT ]]; then
  mkdir -p "$(dirname "$root$PIP_CERT")" && cp "$PIP_CERT" "$root$PIP_CERT"
fi
say "root prepared in $(fmt "$step_s") (ca-certificates, this machine's CAs and pip settings)"

# --- a clean clone of HEAD -------------------------------------------------------------------------------------
git clone --quiet --no-hardlinks "$repo" "$root/root/tessera"
commit=$(git -C "$root/root/tessera" log -1 --format='%h %s' | cut -c1-100)
say "checking commit $commit"
[[ $(git -C "$root/root/tessera" rev-parse HEAD) == $(git -C "$repo" rev-parse HEAD) ]] ||
  die "the clone's HEAD is not $repo's HEAD"
short=$(git -C "$root/root/tessera" rev-parse --short HEAD)
changed=$(git -C "$repo" --no-optional-locks status --porcelain --untracked-files=normal | wc -l)
if ((uncommitted)); then
  if ((changed)); then
    # Read-only on the repository: no index or history is touched there.
    if [[ -n $(git -C "$repo" --no-optional-locks diff --name-only HEAD) ]]; then
      git -C "$repo" --no-optional-locks diff --binary HEAD | git -C "$root/root/tessera" apply --whitespace=nowarn
    fi
    git -C "$repo" ls-files -z --others --exclude-standard | tar -C "$repo" --null -T - -cf - |
      tar -C "$root/root/tessera" -xf -
    say "with the working tree's $changed uncommitted change(s) on top (--uncommitted)"
    short="$short + uncommitted changes"
  fi
elif ((changed)); then
  say "note: $changed uncommitted change(s) in $repo are not checked, only HEAD is (see --uncommitted)"
fi

# --- the README's commands -------------------------------------------------------------------------------------
summary=() failed=0
check() {  # NAME LOG [VAR=VALUE...] -- COMMAND
  local name=$1 log=$2; shift 2
  say "== $name (in the root, as root)"
  in_root "$@"
  run_step "$name" "$log" 1 "${argv[@]}"
  if ((step_rc == 0)); then
    say "$name passed in $(fmt "$step_s")"
    summary+=("$name passed in $(fmt "$step_s")")
  else
    say "$name FAILED (exit $step_rc) after $(fmt "$step_s"); log: $log"
    summary+=("$name FAILED (exit $step_rc) after $(fmt "$step_s")")
    failed=1
  fi
}
if [[ $only == setup ]]; then
  check setup.sh "$logs/setup.log" -- 'cd /root/tessera && scripts/setup.sh'
  if ((!failed)); then
    check "cmake configure" "$logs/configure.log" -- \
      'cd /root/tessera && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release'
  fi
else
  # test.sh first (CI's command, and the one that needs the most), then demo.sh on the same machine.
  check test.sh "$logs/test.log" CI=true -- 'cd /root/tessera && scripts/test.sh'
  check demo.sh "$logs/demo.log" -- 'cd /root/tessera && scripts/demo.sh'
fi

# --- tear down, then the summary as the last lines ---------------------------------------------------------------
if ((keep)); then release_root; say "kept $root (mount /proc, /sys, /dev before chrooting into it)"; else remove_root; fi
[[ -z $(mounts_in_root) ]] || { failed=1; say "mounts left under $root"; }
done_clean=1
say "commit $short; $base_how $(fmt "$base_s"); logs in ${logs#"$repo"/}/"
line=$(printf '%s; ' "${summary[@]}")
say "${line%; }"
exit "$failed"
