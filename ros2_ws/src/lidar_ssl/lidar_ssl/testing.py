"""Helpers for tests that run the nodes over real DDS, kept on this machine.

Every process gets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and one random ``ROS_DOMAIN_ID`` per test,
so DDS traffic never leaves the machine and parallel tests do not see each other.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def ros_env(domain_id: int | None = None) -> dict[str, str]:
    """The environment of a node process: local discovery only, a random domain id (1..100)."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random_domain_id())
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["PYTHONUNBUFFERED"] = "1"
    # the package runs from its source folder whether or not it was pip-installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def random_domain_id() -> int:
    """A random ROS domain id in 1..100; under pytest-xdist each worker draws from its own share of
    that range, so tests running in parallel never meet on one domain."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return random.choice([d for d in range(1, 101) if d % count == index % count] or [1])


def ros_args(params: Mapping[str, object]) -> list[str]:
    """``--ros-args -p name:=value ...`` with YAML-style values (lists as [a, b])."""
    out = ["--ros-args"]
    for name, value in params.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | tuple):
            text = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            text = str(value) or "''"
        out += ["-p", f"{name}:={text}"]
    return out


def start_node(
    module: str,
    params: Mapping[str, object],
    env: Mapping[str, str],
    log: Path,
    ros: Sequence[str] = ("--ros-args",),
) -> subprocess.Popen[bytes]:
    """Start ``python -m lidar_ssl.<module>`` with ROS arguments ``ros``, then ``params``; output: ``log``."""
    handle = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", f"lidar_ssl.{module}", *ros, *ros_args(params)[1:]],
        env=dict(env),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def stop_node(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGINT (a clean shutdown: the node closes its outputs), then SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def wait_for(predicate: object, timeout_s: float, poll_s: float = 0.1) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(poll_s)
    return bool(predicate())  # type: ignore[operator]


# ------------------------------------------------------------------------------------- launch files
# ``launch`` / ``launch_ros`` are not installable without a ROS distribution. A launch file is checked by
# importing it against a minimal stand-in of the parts of their API the package's launch files use, and
# evaluating the description it returns with given launch arguments.

PACKAGE_DIR = Path(__file__).resolve().parents[1]


class _Sub:
    """A substitution: evaluated against the launch arguments."""

    def __init__(self, kind: str, *parts: object) -> None:
        self.kind, self.parts = kind, parts

    def evaluate(self, args: Mapping[str, str]) -> str:
        if self.kind == "config":
            name = str(self.parts[0])
            if name not in args:
                raise KeyError(f"launch argument {name!r} has no value and no default")
            return args[name]
        if self.kind == "share":
            return str(PACKAGE_DIR) if self.parts[0] == "lidar_ssl" else f"<share of {self.parts[0]}>"
        if self.kind == "join":
            return str(Path(*[str(evaluate(p, args)) for p in self.parts[0]]))  # type: ignore[attr-defined]
        if self.kind == "python":
            return str(eval("".join(str(evaluate(p, args)) for p in self.parts[0])))  # type: ignore[attr-defined]
        raise ValueError(self.kind)


def evaluate(value: object, args: Mapping[str, str]) -> object:
    """A launch value with every substitution replaced (lists and dicts recursively)."""
    if isinstance(value, _Sub):
        return value.evaluate(args)
    if isinstance(value, list):
        return [evaluate(v, args) for v in value]
    if isinstance(value, dict):
        return {k: evaluate(v, args) for k, v in value.items()}
    return value


class LaunchedNode:
    """What a launch_ros ``Node`` action says: package, executable, name, parameters, condition."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs

    def enabled(self, args: Mapping[str, str]) -> bool:
        cond = self.kwargs.get("condition")
        return cond is None or str(evaluate(cond.parts[0], args)).lower() in ("true", "1")  # type: ignore[attr-defined]

    def parameters(self, args: Mapping[str, str]) -> tuple[list[Path], dict[str, object]]:
        """(parameter files, parameter dict), substitutions evaluated, values parsed as launch_ros does."""
        files: list[Path] = []
        values: dict[str, object] = {}
        for entry in self.kwargs.get("parameters", []):  # type: ignore[attr-defined]
            if isinstance(entry, dict):
                for k, v in evaluate(entry, args).items():  # type: ignore[attr-defined]
                    values[k] = _yaml_value(v)
            else:
                files.append(Path(str(evaluate(entry, args))))
        return files, values


def _yaml_value(value: object) -> object:
    import yaml

    if isinstance(value, str):
        parsed = yaml.safe_load(value) if value else ""
        return value if parsed is None or isinstance(parsed, dict) else parsed
    if isinstance(value, list):
        return [_yaml_value(v) for v in value]
    return value


class LaunchStub:
    """The launch description of one launch file: declared arguments and node actions."""

    def __init__(self, path: Path) -> None:
        import importlib.util
        import types

        mods = {
            "launch": types.ModuleType("launch"),
            "launch.actions": types.ModuleType("launch.actions"),
            "launch.substitutions": types.ModuleType("launch.substitutions"),
            "launch.conditions": types.ModuleType("launch.conditions"),
            "launch_ros": types.ModuleType("launch_ros"),
            "launch_ros.actions": types.ModuleType("launch_ros.actions"),
            "launch_ros.substitutions": types.ModuleType("launch_ros.substitutions"),
        }

        class DeclareLaunchArgument:
            def __init__(self, name: str, default_value: object = None, description: str = "") -> None:
                self.name, self.default_value, self.description = name, default_value, description

        mods["launch"].LaunchDescription = list  # type: ignore[attr-defined]
        mods["launch.actions"].DeclareLaunchArgument = DeclareLaunchArgument  # type: ignore[attr-defined]
        subs = mods["launch.substitutions"]
        subs.LaunchConfiguration = lambda name: _Sub("config", name)  # type: ignore[attr-defined]
        subs.PathJoinSubstitution = lambda parts: _Sub("join", parts)  # type: ignore[attr-defined]
        subs.PythonExpression = lambda parts: _Sub("python", parts)  # type: ignore[attr-defined]
        mods["launch.conditions"].IfCondition = lambda expr: _Sub("if", expr)  # type: ignore[attr-defined]
        mods["launch_ros.actions"].Node = LaunchedNode  # type: ignore[attr-defined]
        mods["launch_ros.substitutions"].FindPackageShare = lambda pkg: _Sub("share", pkg)  # type: ignore[attr-defined]
        saved = {name: sys.modules.get(name) for name in mods}
        sys.modules.update(mods)
        try:
            spec = importlib.util.spec_from_file_location(f"launch_file_{path.stem.replace('.', '_')}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.actions = list(module.generate_launch_description())
        finally:
            for name, old in saved.items():
                if old is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = old
        self.arguments = {a.name: a for a in self.actions if isinstance(a, DeclareLaunchArgument)}
        self.nodes = [a for a in self.actions if isinstance(a, LaunchedNode)]

    def launch_args(self, **given: str) -> dict[str, str]:
        """Argument values: the given ones over the declared defaults (evaluated)."""
        out: dict[str, str] = {}
        for name, arg in self.arguments.items():
            if arg.default_value is not None:
                out[name] = str(evaluate(arg.default_value, out))
        unknown = set(given) - set(self.arguments)
        if unknown:
            raise KeyError(f"launch arguments {sorted(unknown)} are not declared")
        out.update(given)
        return out


def node_command(node: LaunchedNode, args: Mapping[str, str]) -> tuple[str, list[str]]:
    """(module of the node's executable, ROS arguments) to start what a launch file's node action says."""
    executable = str(node.kwargs["executable"])
    target = entry_points()[executable]  # e.g. lidar_ssl.fleet_recorder:main
    files, values = node.parameters(args)
    ros = ["--ros-args", "-r", f"__node:={node.kwargs['name']}"]
    for f in files:
        ros += ["--params-file", str(f)]
    ros += ros_args(values)[1:]
    return target.split(":")[0].removeprefix("lidar_ssl."), ros


def entry_points() -> dict[str, str]:
    """console_scripts of the package's setup.py (name -> module:function), read without running it."""
    import ast

    tree = ast.parse((PACKAGE_DIR / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            scripts = ast.literal_eval(node.value)["console_scripts"]
            return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in scripts)}
    raise ValueError("setup.py declares no entry_points")
