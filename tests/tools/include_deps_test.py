"""The dependency arrows, enforced: every #include "folder/..." in the project's sources must name a folder that
docs/dependencies.txt allows for the including file's folder (proto's generated headers are "tessera/..."). A
file that includes across an arrow the table does not draw fails this test, naming the file, the line and the
include.

usage: include_deps_test.py REPO_ROOT
"""
import os
import re
import sys

OURS = {"core", "kernels", "parallel", "worker", "coordinator", "tools", "bench", "tests", "proto"}
SOURCE = re.compile(r"\.(cc|h|cu|cuh|inc)$")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([A-Za-z_0-9]+)/')


def read_table(path):
    allowed = {}
    for raw in open(path, encoding="utf-8"):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        folder, _, deps = line.partition(":")
        allowed[folder.strip()] = set(deps.split()) | {folder.strip()}
    unknown = {d for deps in allowed.values() for d in deps} - OURS
    if unknown:
        raise SystemExit(f"{path}: unknown folders {sorted(unknown)}")
    return allowed


def violations(root, allowed):
    found = []
    for folder in sorted(allowed):
        for dirpath, _, names in os.walk(os.path.join(root, folder)):
            if "/tests/data" in dirpath:
                continue
            for name in sorted(names):
                if not SOURCE.search(name):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    for number, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        target = "proto" if m.group(1) == "tessera" else m.group(1)
                        if target in OURS and target not in allowed[folder]:
                            found.append(f"{os.path.relpath(path, root)}:{number}: {folder} may not include "
                                         f"{target}/ ({line.strip()}); docs/dependencies.txt allows "
                                         f"{' '.join(sorted(allowed[folder] - {folder})) or 'nothing'}")
    return found


def main():
    root = sys.argv[1]
    allowed = read_table(os.path.join(root, "docs", "dependencies.txt"))
    missing = sorted(f for f in OURS - {"proto"} if f not in allowed)
    if missing:
        print(f"docs/dependencies.txt has no line for {missing}")
        return 1
    found = violations(root, allowed)
    for v in found:
        print(v)
    print(f"{len(found)} include(s) across an arrow the table does not draw")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
