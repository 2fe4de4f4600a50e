"""Clang's thread-safety analysis over the tree: every C++ translation unit of the project in the build's
compile_commands.json (not .cu files, not generated .pb.cc files, nothing outside the source tree) that uses
locks or thread-safety annotations is parsed by clang++ with its own flags and -Wthread-safety as an error.
The build uses gcc, which ignores the annotations (ABSL_GUARDED_BY, ABSL_EXCLUSIVE_LOCKS_REQUIRED, ...); this
is where they are checked. Headers are checked through the translation units that include them.

"Uses": the file, or a project header it includes (directly or through other project headers), mentions
LOCKING (absl's Mutex types, their headers, the annotation macros or attributes). Clang reports nothing in a
translation unit whose project code mentions none of them (third-party headers are system headers, whose
diagnostics clang does not show), so the others are skipped: with 2 cores the whole tree takes minutes, these
a fraction of it. --all checks every translation unit.

Other clang warnings are off (gcc's -Wall -Wextra -Werror build covers those). A file clang cannot compile
fails too, since it went unchecked, except for the errors of TOLERATED: valid C++20 that clang 14 rejects; the
rest of such a file is still checked, and a note names it.

A file that passed is not parsed again while its flags and every file it includes (clang's own dependency
list, system headers too) keep their size and modification time: the results live in
BUILD_DIR/thread_safety_check/. --no-cache checks every file.

Prints the diagnostics of each failing file and a summary line; exits 1 when any file failed.

usage: thread_safety_check.py BUILD_DIR SOURCE_DIR [--all] [--jobs N] [--clang PATH] [--only SUBSTRING]
                              [--no-cache]
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time

SOURCE_SUFFIXES = (".cc", ".cpp", ".cxx")
# Flags of gcc's command lines that clang must not see: outputs and dependency files (the check writes its
# own), and warning options (replaced by CHECK_FLAGS).
DROP_WITH_VALUE = {"-o", "-MT", "-MF", "-MQ"}
DROP = {"-c", "-MD", "-MMD", "-fsyntax-only"}
DROP_PREFIXES = ("-W", "-fdiagnostics-color", "-fconcepts-diagnostics-depth")
CHECK_FLAGS = ["-fsyntax-only", "-Wno-everything", "-Wthread-safety", "-Werror=thread-safety",
               "-Wno-unknown-warning-option", "-fno-color-diagnostics"]
# Errors of valid C++20 that clang 14 does not compile (the function they are in goes unanalysed).
TOLERATED = {
    "captured structured bindings (P1091, clang 16)":
        re.compile(r"error: reference to local binding '.*' declared in enclosing function"),
}
LOCKING = re.compile(
    r"\bABSL_[A-Z_]*(GUARDED_BY|LOCKS?_|LOCKABLE|CAPABILITY|THREAD_SAFETY|LOCK_FUNCTION|LOCK_RETURNED|"
    r"ACQUIRED_|ASSERT_)|"
    r"\babsl::(Mutex|MutexLock|ReaderMutexLock|WriterMutexLock|ReleasableMutexLock|CondVar)\b|"
    r"absl/synchronization/mutex\.h|absl/base/thread_annotations\.h|"
    r"__attribute__\s*\(\(\s*(guarded_by|pt_guarded_by|capability|requires_capability|acquire_capability|"
    r"release_capability|exclusive_locks_required|shared_locks_required|locks_excluded|scoped_lockable)")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
ERROR = re.compile(r"^\S.*?:\d+:\d+: (fatal )?error: ")
THREAD_SAFETY = "-Wthread-safety"


def translation_units(build_dir, source_dir):
    """(file, (directory, arguments)) for each project C++ source of compile_commands.json, sorted by file."""
    path = os.path.join(build_dir, "compile_commands.json")
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    source_dir = os.path.realpath(source_dir) + os.sep
    build_dir = os.path.realpath(build_dir) + os.sep
    units = {}
    for entry in entries:
        file = os.path.realpath(os.path.join(entry["directory"], entry["file"]))
        if not file.endswith(SOURCE_SUFFIXES) or file.endswith(".pb.cc"):
            continue
        if not file.startswith(source_dir) or file.startswith(build_dir) or "/third_party/" in file:
            continue
        args = entry.get("arguments") or shlex.split(entry["command"])
        units[file] = (entry["directory"], args)
    return sorted(units.items())


class Locking:
    """Whether a translation unit uses locks or annotations (see the module comment), with each file's answer
    remembered."""

    def __init__(self, trees):
        self.trees = tuple(os.path.realpath(t) + os.sep for t in trees)  # project files live under these
        self.mentions = {}  # path -> whether its text matches LOCKING
        self.includes = {}  # path -> the names of its #include "..."

    def _read(self, path):
        if path not in self.mentions:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                text = ""
            self.mentions[path] = LOCKING.search(text) is not None
            self.includes[path] = INCLUDE.findall(text)

    def used_by(self, file, directory, args):
        dirs = [os.path.realpath(os.path.join(directory, d)) for d in include_dirs(args)]
        seen, todo = set(), [file]
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            self._read(path)
            if self.mentions[path]:
                return True
            for name in self.includes[path]:
                for base in [os.path.dirname(path)] + dirs:
                    candidate = os.path.realpath(os.path.join(base, name))
                    if os.path.isfile(candidate):
                        if candidate.startswith(self.trees):
                            todo.append(candidate)
                        break
        return False


def include_dirs(args):
    """The directories of -I, -iquote and -isystem, in order."""
    dirs = []
    for i, arg in enumerate(args):
        for flag in ("-I", "-iquote", "-isystem"):
            if arg == flag and i + 1 < len(args):
                dirs.append(args[i + 1])
            elif arg.startswith(flag) and len(arg) > len(flag):
                dirs.append(arg[len(flag):])
    return dirs


def clang_arguments(clang, file, args):
    """The entry's compiler arguments for clang: its own compiler (and a launcher such as ccache) dropped, and
    DROP / DROP_WITH_VALUE / DROP_PREFIXES; then CHECK_FLAGS and the file."""
    start = 1  # the compiler is the first argument that is not a launcher
    while start < len(args) and os.path.basename(args[start - 1]) in ("ccache", "sccache", "distcc"):
        start += 1
    kept = []
    skip = False
    for arg in args[start:]:
        if skip:
            skip = False
        elif arg in DROP_WITH_VALUE:
            skip = True
        elif arg in DROP or arg.startswith(DROP_PREFIXES):
            continue
        elif os.path.realpath(arg) == file:
            continue
        else:
            kept.append(arg)
    return [clang] + kept + CHECK_FLAGS + [file]


def verdict(output):
    """(ok, notes): ok unless clang reported a thread-safety error or an error TOLERATED does not cover."""
    notes = set()
    for line in output.splitlines():
        if not ERROR.match(line):
            continue
        if THREAD_SAFETY in line:
            return False, set()
        reason = next((r for r, pattern in TOLERATED.items() if pattern.search(line)), None)
        if reason is None:
            return False, set()
        notes.add(reason)
    return True, notes


def dependencies(dep_file, directory):
    """The files of a make-style dependency file, absolute."""
    with open(dep_file, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    _, _, deps = text.partition(": ")
    return [os.path.normpath(os.path.join(directory, d)) for d in deps.split()]


def stamp(paths):
    """Size and modification time of each path (None for a missing one)."""
    result = {}
    for p in paths:
        try:
            s = os.stat(p)
            result[p] = [s.st_size, s.st_mtime_ns]
        except OSError:
            result[p] = None
    return result


class Cache:
    """The files that passed, with their command and the stamps of their dependencies."""

    def __init__(self, directory, enabled):
        self.path = os.path.join(directory, "results.json")
        self.directory = directory
        self.entries = {}
        if enabled:
            os.makedirs(directory, exist_ok=True)
            try:
                with open(self.path, encoding="utf-8") as f:
                    self.entries = json.load(f)
            except (OSError, ValueError):
                self.entries = {}
        self.enabled = enabled

    def passed_before(self, file, command):
        """The notes of the file's last pass when nothing it depends on has changed since, else None."""
        entry = self.entries.get(file)
        if self.enabled and entry is not None and entry["command"] == command and \
                stamp(entry["deps"]) == entry["deps"]:
            return set(entry["notes"])
        return None

    def dep_file(self, file):
        name = hashlib.sha1(file.encode()).hexdigest()[:16] + ".d"
        return os.path.join(self.directory, name)

    def record(self, file, command, deps, notes):
        """A pass (deps: its dependencies) or, when deps is None, a failure (forgets the file)."""
        if deps is None:
            self.entries.pop(file, None)
        else:
            self.entries[file] = {"command": command, "deps": stamp(deps), "notes": sorted(notes)}

    def save(self):
        if not self.enabled:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.entries, f)
        os.replace(tmp, self.path)


def check(command, directory, dep_file):
    """(ok, notes, output, dependencies when ok and dep_file is set)."""
    extra = ["-MD", "-MF", dep_file] if dep_file else []
    result = subprocess.run(command + extra, cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    ok, notes = verdict(result.stdout)
    if result.returncode != 0 and not notes:
        ok = False  # an error this script did not recognise
    deps = None
    if ok and dep_file and os.path.exists(dep_file):
        deps = dependencies(dep_file, directory)
    return ok, notes, result.stdout, deps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir")
    parser.add_argument("source_dir")
    parser.add_argument("--all", action="store_true", help="check every translation unit")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--clang", default="/usr/bin/clang++")
    parser.add_argument("--only", default="", help="check only files whose path contains this")
    parser.add_argument("--no-cache", action="store_true", help="check every file, and record nothing")
    options = parser.parse_args()
    if not os.access(options.clang, os.X_OK):
        print(f"thread_safety_check: no clang at {options.clang} (scripts/setup.sh installs it)")
        return 1
    root = os.path.realpath(options.source_dir)
    units = [(f, d) for f, d in translation_units(options.build_dir, root) if options.only in f]
    if not units:
        print(f"thread_safety_check: no translation units in {options.build_dir}/compile_commands.json")
        return 1
    missing = [f for f, _ in units if not os.path.isfile(f)]  # compile_commands.json is older than the tree
    units = [(f, d) for f, d in units if os.path.isfile(f)]
    total = len(units)
    if not options.all:
        locking = Locking([root, options.build_dir])
        units = [(f, (d, a)) for f, (d, a) in units if locking.used_by(f, d, a)]
    version = subprocess.run([options.clang, "--version"], stdout=subprocess.PIPE, text=True).stdout
    cache_dir = os.path.join(os.path.realpath(options.build_dir), "thread_safety_check")
    cache = Cache(cache_dir, enabled=not options.no_cache)
    start = time.monotonic()
    failed, noted, reused = [], [], 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=options.jobs) as pool:
        futures = {}
        for file, (directory, args) in units:
            command = clang_arguments(options.clang, file, args)
            key = version + shlex.join(command)
            notes = cache.passed_before(file, key)
            if notes is not None:
                reused += 1
                if notes:
                    noted.append((file, notes))
                continue
            dep_file = cache.dep_file(file) if cache.enabled else None
            futures[pool.submit(check, command, directory, dep_file)] = (file, key)
        for future in concurrent.futures.as_completed(futures):
            file, key = futures[future]
            ok, notes, output, deps = future.result()
            cache.record(file, key, deps if ok else None, notes)
            if not ok:
                failed.append((file, output))
            elif notes:
                noted.append((file, notes))
    cache.save()
    for file, output in sorted(failed):
        print(f"=== {os.path.relpath(file, root)}")
        print(output.rstrip())
    for file in missing:
        print(f"note: {os.path.relpath(file, root)} is in compile_commands.json but not in the tree: skipped")
    for file, notes in sorted(noted):
        print(f"note: {os.path.relpath(file, root)}: clang cannot compile some of it "
              f"({'; '.join(sorted(notes))}); the functions concerned went unchecked")
    seconds = time.monotonic() - start
    scope = "every one" if options.all else "those that use locks or annotations"
    print(f"thread_safety_check: {len(units)} of {total} translation units checked ({scope}; {reused} "
          f"unchanged since they passed) in {seconds:.1f} s with {options.jobs} jobs; {len(failed)} failed" +
          "".join(f"\n  {os.path.relpath(f, root)}" for f, _ in sorted(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
