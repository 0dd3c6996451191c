"""dream_jax.utils.malloc: when the CPU entry points re-exec under a caching allocator."""
import os
import subprocess
import sys

from dream_jax.utils import malloc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(malloc.__file__))))


def test_tuned_environment_preloads_the_found_library_and_keeps_the_rest():
  env = malloc.tuned_environment({"PATH": "/bin", "LD_PRELOAD": "/x/libfoo.so"},
                                 ("tcmalloc", "/l/tc.so.4"))
  assert env["LD_PRELOAD"] == "/l/tc.so.4:/x/libfoo.so" and env["PATH"] == "/bin"
  assert env[malloc.MARK] == "tcmalloc" and "GLIBC_TUNABLES" not in env
  assert "MALLOC_CONF" not in env
  env = malloc.tuned_environment({}, ("jemalloc", "/l/je.so.2"))
  assert env["LD_PRELOAD"] == "/l/je.so.2" and env["MALLOC_CONF"] == malloc.JEMALLOC_CONF
  env = malloc.tuned_environment({"MALLOC_CONF": "narenas:2"}, ("jemalloc", "/l/je.so.2"))
  assert env["MALLOC_CONF"] == "narenas:2"                # the user's own setting wins


def test_tuned_environment_falls_back_to_glibc_tunables():
  env = malloc.tuned_environment({"GLIBC_TUNABLES": "glibc.pthread.x=1"}, ("", ""))
  assert env["GLIBC_TUNABLES"] == "glibc.pthread.x=1:" + malloc.GLIBC_TUNABLES
  assert env[malloc.MARK] == "glibc-tunables" and "LD_PRELOAD" not in env


def test_no_change_when_opted_out_already_tuned_or_preloaded():
  found = ("jemalloc", "/l/je.so.2")
  assert malloc.tuned_environment({malloc.OPT_OUT: "1"}, found) is None
  assert malloc.tuned_environment({malloc.MARK: "jemalloc"}, found) is None
  assert malloc.tuned_environment({"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"},
                                  found) is None


def test_find_malloc_prefers_tcmalloc(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  a.mkdir()
  b.mkdir()
  assert malloc.find_malloc((str(a), str(b))) == ("", "")
  (b / "libjemalloc.so.2").write_bytes(b"")
  assert malloc.find_malloc((str(a), str(b))) == ("jemalloc", str(b / "libjemalloc.so.2"))
  (b / "libtcmalloc_minimal.so.4").write_bytes(b"")
  assert malloc.find_malloc((str(a), str(b))) == ("tcmalloc",
                                                  str(b / "libtcmalloc_minimal.so.4"))


def test_reexec_runs_the_same_command_once_with_the_environment(tmp_path):
  script = tmp_path / "probe.py"
  script.write_text(
      "import os, sys\n"
      f"sys.path.insert(0, {ROOT!r})\n"
      "from dream_jax.utils import malloc\n"
      "print('start', os.environ.get(malloc.MARK, '-'), sys.argv[1:], flush=True)\n"
      "malloc.reexec_with_tuned_malloc()\n"
      "print('run', os.environ.get(malloc.MARK, '-'), 'malloc' in os.environ.get('LD_PRELOAD', ''))\n")
  env = {k: v for k, v in os.environ.items() if k not in (malloc.MARK, malloc.OPT_OUT)}
  out = subprocess.run([sys.executable, str(script), "a", "--b=1"], env=env, text=True,
                       capture_output=True, check=True).stdout.splitlines()
  kind, path = malloc.find_malloc()
  mark = kind or "glibc-tunables"
  assert out == ["start - ['a', '--b=1']", f"start {mark} ['a', '--b=1']",
                 f"run {mark} {bool(path)}"]
  env[malloc.OPT_OUT] = "1"
  out = subprocess.run([sys.executable, str(script)], env=env, text=True,
                       capture_output=True, check=True).stdout.splitlines()
  assert out == ["start - []", "run - False"]


def test_release_free_memory_calls_the_loaded_allocator(tmp_path):
  script = tmp_path / "release.py"
  script.write_text(f"import sys; sys.path.insert(0, {ROOT!r})\n"
                    "from dream_jax.utils import malloc\n"
                    "print(malloc.release_free_memory())\n")
  env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
  run = lambda e: subprocess.run([sys.executable, str(script)], env=e, text=True,
                                 capture_output=True, check=True).stdout.strip()
  assert run(env) == ("glibc" if sys.platform == "linux" else "")
  kind, path = malloc.find_malloc()
  if kind == "tcmalloc":
    assert run(dict(env, LD_PRELOAD=path)) == "tcmalloc"
