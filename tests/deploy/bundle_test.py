"""The container image's runtime bundle, proved on this build without Docker: deploy/docker/bundle.sh gathers the
built `tessera`, its plugins and their shared libraries, and then

- the bundled `tessera` makes a model and generates with an empty environment (PATH alone, no LD_LIBRARY_PATH),
  and does so again in a root that holds only glibc and the bundle, as debian:12-slim plus the bundle would;
- `ldd` of every bundled file resolves each library inside the bundle (or to glibc), the NVIDIA driver's alone
  excepted, here and in that root;
- the bundle holds the executable, the plugins and libraries only, the CUDA runtime, cuBLASLt and NCCL among
  them when the plugins are built, and neither glibc nor the driver;
- deploy/docker/Dockerfile's runtime stage copies exactly the bundle the build stage makes, runs `tessera` as
  a non-root user, and every COPY source of the build stage is in the repository and in the build context.

A build without the CUDA backend has no plugins: the test says so and checks the rest. The root with glibc alone
needs root or unprivileged user namespaces; where neither is there, those tests skip, saying why.

usage: .venv/bin/python tests/deploy/bundle_test.py --build-dir build --tessera build/tessera --workdir DIR
"""
import argparse
import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE_SH = os.path.join(ROOT, "deploy", "docker", "bundle.sh")
DOCKERFILE = os.path.join(ROOT, "deploy", "docker", "Dockerfile")
PREFIX = "/opt/tessera"  # where the Dockerfile puts the bundle, and where the glibc-only root holds it
ARGS = None

# Not bundled (bundle.sh says why): glibc's libraries, and the driver's that the NVIDIA container toolkit mounts.
GLIBC = ("ld-linux*.so*", "libc.so.*", "libm.so.*", "libmvec.so.*", "libpthread.so.*", "libdl.so.*", "librt.so.*",
         "libresolv.so.*", "libutil.so.*", "libanl.so.*", "libnsl.so.*", "libnss_*.so*", "libBrokenLocale.so.*",
         "libthread_db.so.*", "libc_malloc_debug.so.*", "linux-vdso.so.*")
DRIVER = ("libcuda.so*", "libnvidia-*.so*")


def matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plugin_names():
    """The plugin file names the sources give LoadPlugin, e.g. {"libtessera_cuda.so", "libtessera_nccl.so"}."""
    names = set()
    for top in ("core", "kernels", "parallel", "worker", "coordinator", "tools"):
        for path in glob.glob(os.path.join(ROOT, top, "**", "*.cc"), recursive=True):
            with open(path) as f:
                names.update(re.findall(r'LoadPlugin\(\s*"\w+",\s*"([^"]+)"', f.read()))
    return names


def ldd(path, prefix=()):
    """{soname: resolved path or None} for `ldd path`, or for `ld.so --list path` through `prefix` (a command that
    enters another root, which has no ldd script). --list stops at the first library it does not find: a driver's
    is reported as {soname: None}, any other fails."""
    argv = [*prefix, "/lib64/ld-linux-x86-64.so.2", "--list", path] if prefix else ["ldd", path]
    result = subprocess.run(argv, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    missing = re.search(r"error while loading shared libraries: (\S+): cannot open", result.stderr)
    if prefix and missing and matches(missing.group(1), DRIVER):
        return {missing.group(1): None}
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    libs = {}
    for line in result.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (?:(not found)|(\S+) \(0x)", line)
        if m:
            libs[m.group(1)] = None if m.group(2) else m.group(3)
    return libs


def run_tessera(argv, prefix=(), path=None):
    """Runs the bundled tessera by name through PATH, with nothing else in its environment."""
    env = {"PATH": path or f"{ARGS.bundle}/bin:/usr/bin:/bin"}
    return subprocess.run([*prefix, "tessera", *argv], capture_output=True, text=True, env=env, timeout=120)


def chroot_prefix(root):
    """The command that runs a program in `root` with its own /proc (the plugins are found through
    /proc/self/exe), or None with the reason it cannot here."""
    base = ["unshare", "--mount", "--pid", "--fork", "--mount-proc=/proc", f"--root={root}"]
    if os.geteuid() != 0:
        base.insert(1, "--map-root-user")
    if shutil.which("unshare") is None:
        return None, "no unshare (util-linux)"
    probe = subprocess.run([*base, "/lib64/ld-linux-x86-64.so.2", "--list", f"{PREFIX}/bin/tessera"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return None, f"unshare cannot enter a root here: {probe.stderr.strip()}"
    return base, None


def make_glibc_root(root):
    """Copies the shared objects of Debian's libc6 package (glibc: what debian:12-slim is sure to hold that the
    bundle leaves out) into root, at the paths the dynamic loader searches."""
    listing = subprocess.run(["dpkg", "-L", "libc6"], capture_output=True, text=True, check=True).stdout
    for path in listing.splitlines():
        name = os.path.basename(path)
        if not (path.startswith(("/lib", "/usr/lib")) and ".so" in name) or os.path.isdir(path):
            continue
        if "/gconv/" in path or "/audit/" in path:
            continue  # iconv's modules and audit libraries: loaded on demand, by nothing here
        dest = root + path
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(path, dest)  # follows symlinks: a plain file under each name
    for name in ("proc", "tmp", "work"):
        os.makedirs(os.path.join(root, name), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)


class BundleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        shutil.rmtree(ARGS.workdir, ignore_errors=True)
        cls.root = os.path.join(ARGS.workdir, "root")
        ARGS.bundle = cls.root + PREFIX
        result = subprocess.run([BUNDLE_SH, ARGS.build_dir, ARGS.bundle], capture_output=True, text=True,
                                timeout=600)
        if result.returncode != 0:
            raise AssertionError(f"bundle.sh exited {result.returncode}: {result.stderr}")
        print(result.stderr.strip(), file=sys.stderr)
        cls.plugins = sorted(n for n in plugin_names() if os.path.exists(os.path.join(ARGS.build_dir, n)))
        if not cls.plugins:
            print(f"note: {ARGS.build_dir} has no plugins ({', '.join(sorted(plugin_names()))}): a build without "
                  "CUDA; checking the CPU-only bundle", file=sys.stderr)
        cls.files = sorted(os.path.relpath(os.path.join(d, f), ARGS.bundle)
                           for d, _, fs in os.walk(ARGS.bundle) for f in fs)
        cls.model = os.path.join(ARGS.workdir, "tiny")

    @classmethod
    def tearDownClass(cls):
        if not ARGS.keep:
            shutil.rmtree(ARGS.workdir, ignore_errors=True)  # the bundle is most of a GiB with the CUDA libraries

    def test_bundled_tessera_makes_a_model_and_generates_with_an_empty_environment(self):
        self.assertEqual(run_tessera(["--help"]).returncode, 0)  # the image's CMD
        made = run_tessera(["make-model", "--preset", "tiny", "--out", self.model, "--seed", "7"])
        self.assertEqual(made.returncode, 0, made.stderr)
        generated = run_tessera(["generate", "--model", self.model, "--prompt-ids", "1,2,3", "--max-tokens", "4"])
        self.assertEqual(generated.returncode, 0, generated.stderr)
        self.assertEqual(len(json.loads(generated.stdout.splitlines()[0])["token_ids"]), 4, generated.stdout)

    def test_cuda_plugin_loads_from_the_bundle(self):
        if "libtessera_cuda.so" not in self.plugins:
            self.skipTest("this build has no CUDA plugin")
        model = os.path.join(ARGS.workdir, "tiny-cuda")
        self.assertEqual(run_tessera(["make-model", "--preset", "tiny", "--out", model]).returncode, 0)
        # The plugin and its CUDA libraries load (a plugin that did not would say "cannot load"); without a GPU
        # the CUDA runtime then finds no device.
        result = run_tessera(["generate", "--model", model, "--prompt-ids", "1,2,3", "--max-tokens", "2",
                              "--device", "cuda"])
        if result.returncode != 0:
            self.assertNotIn("cannot load", result.stderr)
            self.assertIn("no CUDA device", result.stderr)

    def test_ldd_of_every_bundled_file_resolves_inside_the_bundle(self):
        lib_dir = os.path.realpath(os.path.join(ARGS.bundle, "lib"))
        for rel in self.files:
            for soname, path in ldd(os.path.join(ARGS.bundle, rel)).items():
                with self.subTest(file=rel, needs=soname):
                    if matches(soname, DRIVER):
                        continue
                    self.assertIsNotNone(path, f"{rel} needs {soname}: not found")
                    if not matches(soname, GLIBC):
                        self.assertEqual(os.path.dirname(os.path.realpath(path)), lib_dir, f"{soname} => {path}")

    def test_bundle_holds_the_executable_plugins_and_libraries_only(self):
        allowed = {"bin/tessera", *(f"bin/{p}" for p in self.plugins)}
        for rel in self.files:
            with self.subTest(file=rel):
                path = os.path.join(ARGS.bundle, rel)
                self.assertFalse(os.path.islink(path))
                if rel.startswith("lib/"):
                    name = rel[len("lib/"):]
                    self.assertRegex(name, r"^[^/]+\.so(\.[0-9.]+)?$")
                    self.assertFalse(matches(name, GLIBC + DRIVER), "glibc and the driver are not bundled")
                else:
                    self.assertIn(rel, allowed)
        self.assertTrue(allowed <= set(self.files), sorted(allowed - set(self.files)))
        self.assertTrue(os.access(os.path.join(ARGS.bundle, "bin", "tessera"), os.X_OK))
        libs = " ".join(self.files)
        expected = {"libtessera_cuda.so": ("libcudart.so", "libcublasLt.so"), "libtessera_nccl.so": ("libnccl.so",)}
        for plugin in self.plugins:
            for lib in expected.get(plugin, ()):
                self.assertIn(f"lib/{lib}.", libs, f"{plugin} needs {lib}: the slim CUDA runtime")

    def test_runs_in_a_root_with_only_glibc_and_the_bundle(self):
        if shutil.which("dpkg") is None:
            self.skipTest("no dpkg: glibc's files are taken from Debian's libc6 package")
        make_glibc_root(self.root)
        prefix, why = chroot_prefix(self.root)
        if prefix is None:
            self.skipTest(why)
        for rel in self.files:
            for soname, path in ldd(f"{PREFIX}/{rel}", prefix).items():
                with self.subTest(file=rel, needs=soname):
                    self.assertTrue(path is not None or matches(soname, DRIVER), f"{rel} needs {soname}: not found")
        path = f"{PREFIX}/bin:/usr/bin:/bin"
        made = run_tessera(["make-model", "--preset", "tiny", "--out", "/work/tiny", "--seed", "7"], prefix, path)
        self.assertEqual(made.returncode, 0, made.stderr)
        generated = run_tessera(["generate", "--model", "/work/tiny", "--prompt-ids", "1,2,3", "--max-tokens", "4"],
                                prefix, path)
        self.assertEqual(generated.returncode, 0, generated.stderr)
        self.assertEqual(len(json.loads(generated.stdout.splitlines()[0])["token_ids"]), 4, generated.stdout)
        if "libtessera_cuda.so" in self.plugins:
            # Beside the executable is the only place the plugin is here (the build's path is not in this root).
            result = run_tessera(["generate", "--model", "/work/tiny", "--prompt-ids", "1", "--max-tokens", "1",
                                  "--device", "cuda"], prefix, path)
            self.assertNotIn("cannot load", result.stderr)
            self.assertIn("no CUDA device", result.stderr)


def dockerfile_stages(path):
    """[(from_line, [(instruction, arguments)])] of a Dockerfile: continuations joined, comments dropped."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", "\n".join(l for l in f.read().splitlines() if not l.lstrip().startswith("#")))
    stages = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append((rest.strip(), []))
        elif stages:
            stages[-1][1].append((instruction, " ".join(rest.split())))
    return stages


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stages = dockerfile_stages(DOCKERFILE)
        cls.build_from, cls.build = cls.stages[0]
        cls.runtime_from, cls.runtime = cls.stages[-1]
        cls.build_name = cls.build_from.split()[-1]

    def instructions(self, stage, name):
        return [rest for instruction, rest in stage if instruction == name]

    def test_two_stages_on_debian_12(self):
        self.assertEqual(len(self.stages), 2)
        self.assertRegex(self.build_from, r"^debian:12 AS \w+$")
        self.assertRegex(self.runtime_from, r"^debian:12-slim\b")

    def test_runtime_stage_copies_exactly_the_bundle_the_build_stage_makes(self):
        runs = " ".join(self.instructions(self.build, "RUN"))
        m = re.search(r"deploy/docker/bundle\.sh (\S+) (\S+)", runs)
        self.assertIsNotNone(m, "the build stage runs deploy/docker/bundle.sh BUILD_DIR OUT_DIR")
        bundle_dir = m.group(2).rstrip("/")
        copies = self.instructions(self.runtime, "COPY")
        self.assertEqual(copies, [f"--from={self.build_name} {bundle_dir}/ {PREFIX}/"])
        self.assertEqual(self.instructions(self.runtime, "ADD"), [])
        for run in self.instructions(self.runtime, "RUN"):
            self.assertNotRegex(run, r"apt|dpkg|curl|wget|pip", "the runtime stage adds nothing but the bundle")
        env = " ".join(self.instructions(self.runtime, "ENV"))
        self.assertRegex(env, rf"PATH={re.escape(PREFIX)}/bin:")
        self.assertNotIn("LD_LIBRARY_PATH", env, "the bundle's RUNPATH finds its libraries")

    def test_runtime_stage_runs_tessera_as_a_non_root_user(self):
        users = self.instructions(self.runtime, "USER")
        self.assertEqual(len(users), 1)
        uid = users[0].split(":")[0]
        self.assertRegex(uid, r"^[0-9]+$", "numeric, so that Kubernetes' runAsNonRoot can check it")
        self.assertNotEqual(int(uid), 0)
        self.assertEqual([json.loads(e) for e in self.instructions(self.runtime, "ENTRYPOINT")], [["tessera"]])
        self.assertEqual([json.loads(c) for c in self.instructions(self.runtime, "CMD")], [["--help"]])
        exposed = " ".join(self.instructions(self.runtime, "EXPOSE")).split()
        self.assertIn("50051", exposed)
        self.assertIn("8000", exposed)

    def test_build_stage_builds_tessera_and_its_plugins_for_the_architectures_asked(self):
        self.assertTrue(any(a.startswith("CUDA_ARCHITECTURES=") for a in self.instructions(self.build, "ARG")))
        runs = " ".join(self.instructions(self.build, "RUN"))
        self.assertIn('-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHITECTURES"', runs)
        self.assertIn("-DTESSERA_CUDA=ON", runs)
        self.assertIn("scripts/setup.sh", runs)
        targets = re.search(r"ninja -C \S+ (?:\S*BUILD_JOBS\S* )?([\w ]+)", runs).group(1).split()
        expected = {"tessera", *(re.sub(r"^lib|\.so$", "", p) for p in plugin_names())}
        self.assertEqual(set(targets), expected)

    def test_every_copy_source_of_the_build_stage_is_in_the_repository_and_the_context(self):
        with open(os.path.join(ROOT, ".dockerignore")) as f:
            ignored = [l.strip().rstrip("/") for l in f if l.strip() and not l.startswith("#")]
        sources = []
        for copy in self.instructions(self.build, "COPY"):
            words = [w for w in copy.split() if not w.startswith("--")]
            sources += words[:-1]
        self.assertTrue(sources)
        for source in sources + ["scripts/setup.sh", "deploy/docker/bundle.sh", "CMakeLists.txt"]:
            with self.subTest(source=source):
                self.assertTrue(os.path.exists(os.path.join(ROOT, source)), source)
                parts = os.path.normpath(source).split("/")
                prefixes = ["/".join(parts[:i + 1]) for i in range(len(parts))] if parts != ["."] else []
                for pattern in ignored:
                    for prefix in prefixes:  # an ignored folder takes everything below it out of the context
                        self.assertFalse(fnmatch.fnmatchcase(prefix, pattern), f".dockerignore: {pattern}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--build-dir", required=True)
    parser.add_argument("--tessera", required=True, help="the build's tessera (its directory is the build's)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--keep", action="store_true", help="keep the bundle and the glibc-only root in workdir")
    ARGS, rest = parser.parse_known_args()
    ARGS.build_dir = os.path.abspath(ARGS.build_dir)
    ARGS.workdir = os.path.abspath(ARGS.workdir)
    if not os.path.exists(ARGS.tessera):
        sys.exit(f"{ARGS.tessera}: not built")
    if not os.path.samefile(ARGS.tessera, os.path.join(ARGS.build_dir, "tessera")):
        sys.exit(f"{ARGS.tessera} is not {ARGS.build_dir}/tessera, the executable bundle.sh takes")
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
