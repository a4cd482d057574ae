#!/usr/bin/env bash
# Install built qsched binaries into a prefix (default /opt/qsched):
#
#   <prefix>/bin/qsched, <prefix>/bin/qagent   from <target-dir>/release/
#   <prefix>/libtorch/lib                      libtorch, found through the binaries' rpath
#
# The binaries are linked with rpath $ORIGIN/../libtorch/lib (.cargo/config.toml), so this
# layout needs no LD_LIBRARY_PATH. Both link libtorch (qsched through its default
# `embedded` feature, for `submit --local`).
#
# libtorch/lib is one of:
#   - CPU hosts (default): a copy of <target-dir>/libtorch/lib, the CPU libtorch 2.11.0
#     that ops/bootstrap-libtorch.sh extracted. It has no libtorch_cuda.so, so
#     `qagent --device cuda:N` fails on such an install (by design: no CPU fallback).
#   - GPU hosts (--torch-lib DIR): a symlink to the host PyTorch 2.11's torch/lib. qagent
#     then loads libtorch_cpu.so from that folder, and device.rs finds libtorch_cuda.so
#     beside the loaded libtorch_cpu.so (its second lookup, after $QSCHED_LIBTORCH_CUDA),
#     so no further setting is needed. libtorch_cpu.so's own rpath
#     ($ORIGIN/../../nvidia/cu13/lib, ...) still resolves through the symlink, because the
#     kernel resolves `..` after following it.
#
# Version check for --torch-lib: the script reads `__version__` from DIR/../version.py
# (the file `torch.__version__` comes from) and refuses anything but 2.11.x, the libtorch
# tch 0.24 is built against. It does not import torch: that needs the right interpreter
# and would load CUDA. Only 2.11.0+cu130 has been run with qagent (DESIGN.md §2); other
# 2.11 builds get a warning. For the copy, it checks <target-dir>/libtorch/build-version
# (written by ops/bootstrap-libtorch.sh).
#
# Idempotent: files that are already identical are left alone; a changed file is written
# to a temporary name and renamed over the old one (never rewritten in place, which would
# corrupt a library that a running process has mapped). Files in a copied libtorch/lib
# that the source no longer has are removed.
#
# Stop the agents on this host before an install that changes anything (the script
# refuses while it sees a qsched/qagent running from the prefix; --force overrides): an
# agent starts each shard's worker from its own executable path (/proc/self/exe), and once
# that file has been replaced the path reads "<prefix>/bin/qagent (deleted)", so the
# running agent could not start workers and would fail the shards it takes. SIGTERM
# (`systemctl stop`) returns a running shard to the queue, so stopping first loses nothing.
#
# Usage: ops/install.sh [--prefix DIR] [--target-dir DIR] [--torch-lib DIR] [--force] [--dry-run]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/qsched
target=${CARGO_TARGET_DIR:-$repo/target}
torch_lib=
dry_run=0
force=0

usage() {
  cat <<EOF
usage: $0 [--prefix DIR] [--target-dir DIR] [--torch-lib DIR] [--force] [--dry-run]

  --prefix DIR      install root (default /opt/qsched)
  --target-dir DIR  cargo target dir holding release/ and libtorch/
                    (default \$CARGO_TARGET_DIR or <repo>/target)
  --torch-lib DIR   GPU hosts: link <prefix>/libtorch/lib to this PyTorch 2.11 torch/lib
                    instead of copying the CPU libtorch
  --force           install even while qsched/qagent processes run from the prefix
  --dry-run         print what would be done, change nothing
EOF
}

die() { echo "install: $*" >&2; exit 1; }
note() { echo "install: $*" >&2; }

while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --target-dir) [ $# -ge 2 ] || die "--target-dir needs a value"; target=$2; shift 2 ;;
    --target-dir=*) target=${1#*=}; shift ;;
    --torch-lib) [ $# -ge 2 ] || die "--torch-lib needs a value"; torch_lib=$2; shift 2 ;;
    --torch-lib=*) torch_lib=${1#*=}; shift ;;
    --force) force=1; shift ;;
    --dry-run|-n) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

case $prefix in
  /*) ;;
  *) die "--prefix must be an absolute path (got '$prefix')" ;;
esac
prefix=${prefix%/}
[ -n "$prefix" ] || die "refusing to install into /"

# Every change goes through act, so --dry-run prints exactly what a real run would do.
changes=0
act() {
  changes=$((changes + 1))
  if [ "$dry_run" = 1 ]; then
    printf 'would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# ---- what to install ---------------------------------------------------------------

[ -d "$target" ] || die "target dir $target not found (pass --target-dir)"
target=$(cd "$target" && pwd)
release=$target/release
for b in qsched qagent; do
  [ -f "$release/$b" ] && [ -x "$release/$b" ] ||
    die "$release/$b not found: build first (ops/bootstrap-libtorch.sh && cargo build --release)"
done

# RUSTFLAGS in the environment replaces the rustflags of .cargo/config.toml, and with
# them the rpath: such a binary would not find libtorch in this layout. Check when
# readelf is available.
if command -v readelf >/dev/null 2>&1; then
  for b in qsched qagent; do
    dyn=$(readelf -d "$release/$b")
    # shellcheck disable=SC2016 # a literal $ORIGIN
    case $dyn in
      *'$ORIGIN/../libtorch/lib'*) ;;
      *) die "$release/$b has no rpath \$ORIGIN/../libtorch/lib (was it built with RUSTFLAGS set, which overrides .cargo/config.toml?)" ;;
    esac
  done
else
  note "readelf not found; not checking the binaries' rpath"
fi

if [ -n "$torch_lib" ]; then
  [ -d "$torch_lib" ] || die "--torch-lib $torch_lib is not a directory"
  # Physical absolute path: the symlink pins exactly the folder that was checked here.
  torch_lib=$(cd "$torch_lib" && pwd -P)
  for f in libtorch_cpu.so libc10.so libtorch_cuda.so; do
    [ -e "$torch_lib/$f" ] || die "$torch_lib has no $f (expected a PyTorch torch/lib folder of a CUDA build)"
  done
  version_py=$(dirname "$torch_lib")/version.py
  [ -f "$version_py" ] || die "$version_py not found: cannot tell which PyTorch $torch_lib belongs to"
  torch_version=$(sed -n "s/^__version__ *= *['\"]\([^'\"]*\)['\"].*/\1/p" "$version_py" | head -n 1)
  [ -n "$torch_version" ] || die "no __version__ in $version_py"
  case $torch_version in
    2.11.[0-9]*) ;;
    *) die "PyTorch $torch_version at $torch_lib: qagent needs 2.11.x (tch 0.24 is built against libtorch 2.11.0)" ;;
  esac
  case $torch_version in
    *+cu130) ;;
    *) note "warning: PyTorch $torch_version: only 2.11.0+cu130 has been run with qagent; other 2.11 builds are untested" ;;
  esac
  note "GPU layout: libtorch/lib -> $torch_lib (PyTorch $torch_version, from $version_py)"
else
  cpu_lib=$target/libtorch/lib
  [ -f "$cpu_lib/libtorch_cpu.so" ] && [ -f "$cpu_lib/libc10.so" ] ||
    die "$cpu_lib has no libtorch_cpu.so/libc10.so: run ops/bootstrap-libtorch.sh (or pass --torch-lib on a GPU host)"
  build_version=$(cat "$target/libtorch/build-version" 2>/dev/null || true)
  case $build_version in
    2.11.*) ;;
    *) die "$target/libtorch/build-version is '${build_version:-missing}', expected 2.11.x: rerun ops/bootstrap-libtorch.sh" ;;
  esac
  note "CPU layout: libtorch/lib is a copy of $cpu_lib (libtorch $build_version)"
fi

# ---- planned changes ---------------------------------------------------------------

# A file needs writing unless an identical regular file is already there.
differs() { ! { [ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$1" "$2"; }; }

lib_dest=$prefix/libtorch/lib
pending=()
for b in qsched qagent; do
  differs "$release/$b" "$prefix/bin/$b" && pending+=("bin/$b")
done
if [ -n "$torch_lib" ]; then
  { [ -L "$lib_dest" ] && [ "$(readlink "$lib_dest")" = "$torch_lib" ]; } || pending+=("libtorch/lib (symlink)")
else
  if [ -L "$lib_dest" ] || [ ! -d "$lib_dest" ]; then
    pending+=("libtorch/lib (copy)")
  else
    while IFS= read -r -d '' f; do
      differs "$f" "$lib_dest/${f##*/}" && pending+=("libtorch/lib/${f##*/}")
    done < <(find "$cpu_lib" -maxdepth 1 \( -type f -o -type l \) -print0)
    while IFS= read -r -d '' f; do
      [ -e "$cpu_lib/${f##*/}" ] || pending+=("libtorch/lib/${f##*/} (stale)")
    done < <(find "$lib_dest" -mindepth 1 -maxdepth 1 -print0)
  fi
fi

if [ ${#pending[@]} -eq 0 ]; then
  note "$prefix is up to date"
  exit 0
fi
note "to update in $prefix: ${pending[*]}"

# Agents (and `qsched submit --local`) running from this prefix: see the header.
prefix_real=$(readlink -f "$prefix" 2>/dev/null || echo "$prefix")
running=()
for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null) || continue
  case $exe in
    "$prefix_real"/bin/qagent | "$prefix_real"/bin/qsched | \
    "$prefix_real/bin/qagent (deleted)" | "$prefix_real/bin/qsched (deleted)")
      running+=("${p#/proc/}") ;;
  esac
done
if [ ${#running[@]} -gt 0 ]; then
  msg="processes running from $prefix_real/bin (pids ${running[*]}); stop the agents first, e.g. systemctl stop 'qagent@*'"
  if [ "$force" = 1 ]; then
    note "warning: $msg (continuing: --force)"
  elif [ "$dry_run" = 1 ]; then
    note "warning: $msg (a real run would refuse)"
  else
    die "$msg, or pass --force"
  fi
fi
[ "$(id -u)" = 0 ] || note "not root: processes of other users are invisible to this check"

# ---- install -----------------------------------------------------------------------

tmp_suffix=.qsched-install.$$
# put SRC DEST MODE: write DEST through a temporary file and a rename.
put() {
  if differs "$1" "$2"; then
    [ ! -d "$2" ] || [ -L "$2" ] || die "$2 is a directory"
    act install -m "$3" "$1" "$2$tmp_suffix"
    act mv -f "$2$tmp_suffix" "$2"
  fi
}

act_mkdir() { [ -d "$1" ] && [ ! -L "$1" ] || act mkdir -p "$1"; }

act_mkdir "$prefix/bin"
act_mkdir "$prefix/libtorch"
put "$release/qsched" "$prefix/bin/qsched" 0755
put "$release/qagent" "$prefix/bin/qagent" 0755

if [ -n "$torch_lib" ]; then
  if ! { [ -L "$lib_dest" ] && [ "$(readlink "$lib_dest")" = "$torch_lib" ]; }; then
    # A copied lib folder from an earlier CPU install is replaced by the link; running
    # processes keep their mapped files (removing a file only drops its name).
    if [ -d "$lib_dest" ] && [ ! -L "$lib_dest" ]; then
      act rm -rf "$lib_dest"
    fi
    act ln -s "$torch_lib" "$lib_dest$tmp_suffix"
    act mv -T -f "$lib_dest$tmp_suffix" "$lib_dest"
  fi
else
  # fresh: the folder is created now, so every file is written (and nothing compared
  # against what an old symlink points to).
  fresh=0
  if [ -L "$lib_dest" ]; then
    act rm -f "$lib_dest" # an earlier GPU install's symlink
    fresh=1
  elif [ ! -d "$lib_dest" ]; then
    fresh=1
  fi
  if [ "$fresh" = 1 ]; then
    act mkdir -p "$lib_dest"
  fi
  while IFS= read -r -d '' f; do
    name=${f##*/}
    if [ "$fresh" = 1 ]; then
      act install -m 0644 "$f" "$lib_dest/$name"
    else
      put "$f" "$lib_dest/$name" 0644
    fi
  done < <(find "$cpu_lib" -maxdepth 1 \( -type f -o -type l \) -print0 | sort -z)
  if [ "$fresh" = 0 ]; then
    while IFS= read -r -d '' f; do
      [ -e "$cpu_lib/${f##*/}" ] || act rm -rf "$f"
    done < <(find "$lib_dest" -mindepth 1 -maxdepth 1 -print0)
  fi
fi

if [ "$dry_run" = 1 ]; then
  note "dry run: $changes action(s) listed, nothing changed"
  exit 0
fi

# Smoke test: the dynamic loader must resolve libtorch through the rpath and the new
# layout (clap answers --version before anything else runs).
for b in qsched qagent; do
  "$prefix/bin/$b" --version >/dev/null ||
    die "$prefix/bin/$b --version failed: the installed layout does not load"
done
note "installed into $prefix ($changes action(s)); $("$prefix/bin/qagent" --version)"
