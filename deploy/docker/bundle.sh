#!/usr/bin/env bash
# Gathers the `tessera` executable, its plugins and every shared library they need into one relocatable folder,
# the whole of what the container image's runtime stage adds to debian:12-slim (deploy/docker/Dockerfile):
#
#   OUT_DIR/bin/tessera
#   OUT_DIR/bin/libtessera_cuda.so, libtessera_nccl.so   beside the executable, where core/plugin.cc looks first
#   OUT_DIR/lib/<soname>                                  the ldd closure of the executable and of each plugin
#
# Left out: glibc's own libraries (every image has them, and they must match its ld.so) and the NVIDIA driver's
# (libcuda.so.1, libnvidia-*), which the NVIDIA container toolkit mounts from the host. The CUDA runtime,
# cuBLASLt and NCCL come in through the plugins' ldd: they are the image's slim CUDA runtime.
#
# Every file finds its libraries through its own RUNPATH, set with patchelf: $ORIGIN/../lib in bin/, $ORIGIN in
# lib/ (on those libraries that need another bundled one and do not already say $ORIGIN). So the bundle needs no
# LD_LIBRARY_PATH and works wherever it is copied: after `env -i`, in the worker processes `tessera serve` execs,
# under a Kubernetes `command:` override, and `ldd` of any one file answers from the bundle.
#
# The closure is resolved as the build machine resolves it, with LD_LIBRARY_PATH unset: through the binaries'
# RUNPATH (CMake's, naming the CUDA toolkit's lib directory) and ld.so's cache. Fails, naming the culprit, when a
# library is not found, when one soname resolves to two different files, or when the finished bundle's own ldd
# reaches outside it.
#
# usage: deploy/docker/bundle.sh BUILD_DIR OUT_DIR      (OUT_DIR: absent or empty)
set -euo pipefail

die() { echo "bundle.sh: $*" >&2; exit 1; }
[ $# -eq 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
build=$1
out=$2
[ -x "$build/tessera" ] || die "$build/tessera: no such executable (build the tessera target first)"
[ ! -e "$out" ] || [ -z "$(ls -A "$out")" ] || die "$out is not empty"
for tool in ldd patchelf; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/setup.sh installs it)"
done

# The plugins, by the file names core/plugin.cc's callers give LoadPlugin (kernels/backend_factory.cc,
# parallel/communicator_factory.cc). A build without CUDA has neither: the bundle is then CPU-only.
plugin_names=(libtessera_cuda.so libtessera_nccl.so)
# shellcheck disable=SC2016  # literally: the dynamic loader expands it to the directory of the file that says it
origin='$ORIGIN'

# Not bundled: glibc (the libc6 package) and the NVIDIA driver's user-space libraries.
is_glibc() {
  case "$1" in
    ld-linux*.so* | libc.so.* | libm.so.* | libmvec.so.* | libpthread.so.* | libdl.so.* | librt.so.* | \
      libresolv.so.* | libutil.so.* | libanl.so.* | libnsl.so.* | libnss_*.so* | libBrokenLocale.so.* | \
      libthread_db.so.* | libc_malloc_debug.so.* | linux-vdso.so.*) return 0 ;;
  esac
  return 1
}
is_driver() {
  case "$1" in
    libcuda.so* | libnvidia-*.so*) return 0 ;;
  esac
  return 1
}

# "soname<TAB>path" for each library `ldd FILE` lists: path is "not found" when it was not.
ldd_pairs() {
  env -u LD_LIBRARY_PATH ldd "$1" | awk '
    $2 == "=>" && $3 == "not" { print $1 "\tnot found"; next }
    $2 == "=>" && $3 ~ /^\// { print $1 "\t" $3 }'
}

binaries=("$build/tessera")
for name in "${plugin_names[@]}"; do
  if [ -f "$build/$name" ]; then
    binaries+=("$build/$name")
  else
    echo "bundle.sh: note: no $build/$name (a build without it): not bundled" >&2
  fi
done

# soname -> the real file it resolved to, over the executable and every plugin.
declare -A libs=()
for binary in "${binaries[@]}"; do
  while IFS=$'\t' read -r soname path; do
    if is_glibc "$soname" || is_driver "$soname"; then
      continue
    fi
    [ "$path" != "not found" ] || die "$(basename "$binary") needs $soname, which ldd does not find"
    real=$(readlink -f "$path")
    if [ -n "${libs[$soname]:-}" ] && [ "${libs[$soname]}" != "$real" ]; then
      die "$soname resolves to both ${libs[$soname]} and $real"
    fi
    libs[$soname]=$real
  done < <(ldd_pairs "$binary")
done

mkdir -p "$out/bin" "$out/lib"
out=$(cd "$out" && pwd -P)  # as $ORIGIN expands, so that the final check can compare paths
for binary in "${binaries[@]}"; do
  install -m 0755 "$binary" "$out/bin/"
  patchelf --set-rpath "$origin/../lib" "$out/bin/$(basename "$binary")"
done
for soname in "${!libs[@]}"; do
  install -m 0644 "${libs[$soname]}" "$out/lib/$soname"
done
for lib in "$out"/lib/*; do
  needs_bundled=0
  while read -r needed; do
    if ! is_glibc "$needed" && ! is_driver "$needed"; then
      needs_bundled=1
      break
    fi
  done < <(patchelf --print-needed "$lib")
  if ((needs_bundled)) && [ "$(patchelf --print-rpath "$lib")" != "$origin" ]; then
    patchelf --set-rpath "$origin" "$lib"
  fi
done

# The finished bundle, checked as the runtime image will see it: each file's libraries resolve inside it (or to
# glibc); only the driver's may be missing.
for file in "$out"/bin/* "$out"/lib/*; do
  while IFS=$'\t' read -r soname path; do
    if is_glibc "$soname" || is_driver "$soname"; then
      continue
    fi
    [ "$path" != "not found" ] || die "$(basename "$file"): $soname not found"
    [ "$(dirname "$(readlink -f "$path")")" = "$out/lib" ] ||
      die "$(basename "$file"): $soname resolves to $path, outside the bundle"
  done < <(ldd_pairs "$file")
done

echo "bundle.sh: $out: ${#binaries[@]} files in bin/, ${#libs[@]} in lib/, $(du -sh "$out" | cut -f1)" >&2
