"""The README's and docs/' commands and examples, run as written, so the documentation cannot drift.

What runs, against workers started on free loopback ports (port 8000 in the docs is the mock,
8001 the legacy worker; a block that starts its own worker uses that one):

- ``console`` blocks: each ``$ command`` (with ``\\`` continuations) runs in bash in a temporary
  directory. The lines after it are its expected output: ``...`` stands for anything, and a job id
  shown in an output (``"job_id":"..."``) stands for the real one, which later commands then use.
  ``dualcall-worker mock|legacy`` lines (or ``python -m workers ...``) start that worker (on a free
  port) for the block; their expected output is compared with the worker's banner.
- ``python`` blocks: each runs in a fresh interpreter.
- ``yaml`` blocks of docs/ci.md: the GitHub Actions and GitLab CI recipes, step by step.

What does not run is listed in `EXCLUDED`, with the reason; a command matching none of its patterns
is run, so a new command in the docs is tested by default.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from helpers import free_port
from workerproc import WorkerProcess

from workers.__main__ import build_parser

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_TIMEOUT_S = 120
DOC_PORTS = {"8000": "mock", "8001": "legacy"}

#: (pattern on the command, why it is not run here)
EXCLUDED: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^pip install tox && tox\b"), "builds tox environments from PyPI (network); CI runs `tox` itself"),
    (re.compile(r"^(python -m )?pip install\b"), "installs from PyPI or a git host: needs the network"),
    (re.compile(r"^python3 -m venv\b"), "creates a virtual environment; the tests already run inside one"),
    (re.compile(r"\bexllamav2\b"), "needs a CUDA GPU and a model (docs/gpu.md; `tox -e gpu`)"),
]

_SAMPLE_JOB_ID = re.compile(r'"job_id":\s*"([A-Za-z0-9_-]{16,})"')
_SERVER = re.compile(r"^(python -m workers|dualcall-worker) (mock|legacy)\b")
_DOC_PORT = re.compile(r"\b(localhost|127\.0\.0\.1):(800[01])\b")


# -- extraction -----------------------------------------------------------------------------------------


@dataclass
class Block:
    path: Path
    line: int
    language: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)

    def exclusion(self) -> str | None:
        for pattern, reason in EXCLUDED:
            if pattern.search(self.text):
                return reason
        return None


def fenced_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    language = ""
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            if start is None:
                start, language = number, line[3:].strip().split(" ")[0]
            else:
                blocks.append(Block(path, start, language, "\n".join(lines[start : number - 1])))
                start = None
    assert start is None, f"{path}: unclosed code fence at line {start}"
    return blocks


def console_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    continuing = False
    for line in block.text.splitlines():
        if continuing:
            commands[-1].text += "\n" + line
        elif line.startswith("$ "):
            commands.append(Command(line[2:]))
        elif commands:
            commands[-1].expected.append(line)
        continuing = line.endswith("\\") and bool(commands)
    return commands


def all_blocks(language: str) -> list[Block]:
    return [block for path in DOC_FILES for block in fenced_blocks(path) if block.language == language]


# -- running --------------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("DUALCALL_TOKEN", None)
    env.pop("DUALCALL_AUTH_TOKEN", None)
    return env


def with_ports(text: str, ports: dict[str, int]) -> str:
    return _DOC_PORT.sub(lambda m: f"{m.group(1)}:{ports[m.group(2)]}", text)


def expected_pattern(
    expected: list[str], ports: dict[str, int], ids: dict[str, str]
) -> tuple[re.Pattern[str], dict[str, str]]:
    """The documented output as a regex: `...` matches anything; a sample job id not seen before
    captures the real one (later mentions must repeat it). Returns the regex and {group: sample id}."""
    text = substitute_ids(with_ports("\n".join(expected).rstrip(), ports), ids)
    samples = list(dict.fromkeys(_SAMPLE_JOB_ID.findall(text)))
    groups = {sample: f"id{number}" for number, sample in enumerate(samples)}
    token = re.compile("|".join([re.escape("..."), *(re.escape(sample) for sample in samples)]))
    pieces: list[str] = []
    seen: set[str] = set()
    position = 0
    for match in token.finditer(text):
        pieces.append(re.escape(text[position : match.start()]))
        position = match.end()
        if match.group() == "...":
            pieces.append(".*?")
        elif match.group() in seen:
            pieces.append(f"(?P={groups[match.group()]})")
        else:
            seen.add(match.group())
            pieces.append(f"(?P<{groups[match.group()]}>[A-Za-z0-9_-]+)")
    pieces.append(re.escape(text[position:]))
    return re.compile("".join(pieces), re.DOTALL), {group: sample for sample, group in groups.items()}


def substitute_ids(text: str, ids: dict[str, str]) -> str:
    for sample, real in ids.items():
        text = text.replace(sample, real)
    return text


def run_shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def server_args(command: str) -> tuple[str, list[str], str]:
    """`python -m workers mock --port 8001 --x` -> ("mock", ["--x"], "8001")."""
    argv = shlex.split(command, comments=True)
    engine_at = next(i for i, arg in enumerate(argv) if arg in {"mock", "legacy"})
    engine, rest = argv[engine_at], argv[engine_at + 1 :]
    port = "8000"
    if "--port" in rest:
        at = rest.index("--port")
        port = rest[at + 1]
        del rest[at : at + 2]
    return engine, rest, port


#: passing runs of commands against the module's shared workers, by command text
_ran: dict[str, subprocess.CompletedProcess[str]] = {}


@pytest.fixture(scope="module")
def default_workers() -> Iterator[dict[str, WorkerProcess]]:
    with WorkerProcess("mock") as mock, WorkerProcess("legacy") as legacy:
        yield {"mock": mock, "legacy": legacy}


def port_of(worker: WorkerProcess) -> int:
    return int(worker.url.rsplit(":", 1)[1])


# -- console blocks ---------------------------------------------------------------------------------------


def runnable(block: Block) -> bool:
    return any(not command.exclusion() for command in console_commands(block))


@pytest.mark.parametrize("block", [b for b in all_blocks("console") if runnable(b)], ids=lambda block: block.name)
def test_console_block(block: Block, default_workers: dict[str, WorkerProcess], tmp_path: Path) -> None:
    commands = console_commands(block)
    assert commands, f"{block.name}: a console block without a `$ ` command"
    if not shutil.which("curl") and any(c.text.startswith("curl ") for c in commands):
        pytest.skip("curl is not installed")
    ports = {doc_port: port_of(default_workers[engine]) for doc_port, engine in DOC_PORTS.items()}
    ids: dict[str, str] = {}
    ran = 0
    started: list[WorkerProcess] = []
    try:
        for command in commands:
            if command.exclusion():
                continue
            ran += 1
            if _SERVER.match(command.text):
                engine, args, doc_port = server_args(command.text)
                worker = WorkerProcess(engine, *args).start()
                started.append(worker)
                ports[doc_port] = port_of(worker)
                banner = worker.stdout_lines[0].rstrip("\n") if worker.stdout_lines else ""
                if command.expected:
                    pattern, _ = expected_pattern(command.expected, ports, ids)
                    assert pattern.fullmatch(banner), f"{block.name}: banner {banner!r} is not {command.expected}"
                continue
            shell = with_ports(substitute_ids(command.text, ids), ports)
            # the same command against the same shared worker gives the same verdict: run it once
            cache_key = None if started or ids else command.text
            done = _ran.get(cache_key) if cache_key else None
            if done is None:
                done = run_shell(shell, tmp_path)
                if cache_key and done.returncode == 0:
                    _ran[cache_key] = done
            assert done.returncode == 0, (
                f"{block.name}: `{shell}` exited {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
            if command.expected:
                actual = done.stdout.replace("\r\n", "\n").rstrip()
                pattern, samples = expected_pattern(command.expected, ports, ids)
                match = pattern.fullmatch(actual)
                assert match, f"{block.name}: `{shell}` printed\n{actual}\n--- the docs show ---\n" + "\n".join(
                    command.expected
                )
                ids.update({samples[group]: real for group, real in match.groupdict().items()})
    finally:
        for worker in started:
            worker.stop()
    assert ran, f"{block.name}: nothing ran"


# -- python blocks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", all_blocks("python"), ids=lambda block: block.name)
def test_python_block(block: Block, default_workers: dict[str, WorkerProcess], tmp_path: Path) -> None:
    ports = {doc_port: port_of(default_workers[engine]) for doc_port, engine in DOC_PORTS.items()}
    script = tmp_path / "example.py"
    script.write_text(with_ports(block.text, ports), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{block.name} failed:\n{done.stdout}\n{done.stderr}"


# -- CI recipes (docs/ci.md) --------------------------------------------------------------------------------


def ci_recipes() -> list[tuple[str, list[str], list[str]]]:
    """(name, shell steps, artifact paths) of each recipe in docs/ci.md."""
    recipes = []
    for block in fenced_blocks(ROOT / "docs" / "ci.md"):
        if block.language != "yaml":
            continue
        document = yaml.safe_load(block.text)
        if "jobs" in document:  # GitHub Actions
            for name, job in document["jobs"].items():
                steps = [run for step in job["steps"] for run in github_step_scripts(step)]
                uploads = [step for step in job["steps"] if str(step.get("uses", "")).startswith("actions/upload")]
                paths = [p.strip() for upload in uploads for p in upload["with"]["path"].splitlines() if p.strip()]
                recipes.append((f"github:{name}", steps, paths))
        else:  # GitLab CI
            for name, job in document.items():
                recipes.append((f"gitlab:{name}", ["\n".join(job["script"])], job["artifacts"]["paths"]))
    return recipes


#: the repository's own GitHub Action (action.yml), as a workflow names it
_THIS_ACTION = re.compile(r"^[\w.-]+/dualcall@[\w./-]+$")
_EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")
#: steps of action.yml that are not run here, and why
ACTION_STEPS_NOT_RUN = {"Install the gate": "installs the action's checkout with pip into a new venv (network)"}


def action_step_scripts(inputs: dict[str, str]) -> list[str]:
    """action.yml's run steps as bash scripts, with the inputs its ``${{ }}`` expressions name."""
    action = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
    values = {f"inputs.{name}": str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    unknown = set(inputs) - {name.removeprefix("inputs.") for name in values}
    assert not unknown, f"the workflow passes inputs action.yml does not declare: {sorted(unknown)}"
    values |= {f"inputs.{name}": str(value) for name, value in inputs.items()}
    values["github.action_path"] = str(ROOT)
    scripts = []
    for step in action["runs"]["steps"]:
        if step["name"] in ACTION_STEPS_NOT_RUN:
            continue
        env = {name: _EXPRESSION.sub(lambda m: values[m.group(1)], str(value)) for name, value in step["env"].items()}
        exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
        scripts.append(exports + step["run"])
    return scripts


def github_step_scripts(step: dict[str, object]) -> list[str]:
    if "run" in step:
        return [str(step["run"])]
    if _THIS_ACTION.match(str(step.get("uses", ""))):
        with_inputs = step.get("with") or {}
        assert isinstance(with_inputs, dict)
        return action_step_scripts({str(name): str(value) for name, value in with_inputs.items()})
    return []


@pytest.mark.parametrize("recipe", ci_recipes(), ids=lambda recipe: recipe[0])
def test_ci_recipe(recipe: tuple[str, list[str], list[str]], tmp_path: Path) -> None:
    name, steps, artifacts = recipe
    assert artifacts, f"{name}: no report is kept as an artifact"
    port = str(free_port())
    sessions: list[subprocess.Popen[str]] = []
    try:
        for step in steps:
            lines = [line for line in step.splitlines() if not EXCLUDED[1][0].search(line.strip())]
            script = "\n".join(lines).replace(":8000", f":{port}").replace("--port 8000", f"--port {port}")
            # bash -e like both CI systems; a new session so the background worker can be stopped
            process = subprocess.Popen(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                cwd=tmp_path,
                env=environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            sessions.append(process)
            output, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
            assert process.returncode == 0, f"{name}: step failed ({process.returncode}):\n{script}\n{output}"
        for artifact in artifacts:
            assert (tmp_path / artifact).exists(), f"{name}: the artifact {artifact} was not written"
        assert "<html" in (tmp_path / "reports" / "dualcall.html").read_text(encoding="utf-8")[:500].lower()
    finally:
        for process in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)


def run_action(inputs: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """action.yml's steps (but the install) in one bash session, the worker in its own process group."""
    port = str(free_port())
    script = "\n".join(f"(\n{body}\n)" for body in action_step_scripts(inputs))
    process = subprocess.Popen(
        [
            "bash",
            "-e",
            "-o",
            "pipefail",
            "-c",
            script.replace(":8000", f":{port}").replace("--port 8000", f"--port {port}"),
        ],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def test_action_reports_a_worker_that_never_answers_without_curl_noise(tmp_path: Path) -> None:
    done = run_action({"start": "echo 'engine: no model at /models/x'; exit 3", "health-timeout": "3"}, tmp_path)
    assert done.returncode == 1, done.stdout
    assert "did not answer http://127.0.0.1:" in done.stdout and "within 3s" in done.stdout
    assert "engine: no model at /models/x" in done.stdout  # the end of the worker's log, where CI shows it
    assert "curl" not in done.stdout  # the wait itself is quiet


@pytest.mark.parametrize(("require_all", "code"), [("true", 1), ("false", 0)])
def test_action_fails_a_rule_the_worker_hides_only_with_require_all(
    tmp_path: Path, require_all: str, code: int
) -> None:
    """The default mock's 60 s TTL hides TTL reclaim: unverified, which --require-all (the default) fails."""
    inputs = {
        "start": "dualcall-worker mock --port 8000",
        "args": "--checks DC-LIFE-001 --no-fuzz",
        "require-all": require_all,
    }
    done = run_action(inputs, tmp_path)
    assert done.returncode == code, done.stdout
    assert "the worker answers http://127.0.0.1:" in done.stdout and "curl" not in done.stdout
    assert "DC-LIFE-001" in done.stdout and (tmp_path / "reports" / "dualcall.json").exists()
    assert "Application startup complete" in (tmp_path / "reports" / "worker.log").read_text(encoding="utf-8")


def test_only_the_listed_commands_are_not_run() -> None:
    """What the docs show but this module does not run, and why: adding one means adding it here."""
    not_run = {
        (block.path.name, command.text.split("#")[0].strip()): command.exclusion()
        for block in all_blocks("console")
        for command in console_commands(block)
        if command.exclusion()
    }
    assert sorted(not_run) == [
        ("README.md", 'pip install "dualcall[conformance] @ git+<this repository>"'),
        ("README.md", "pip install tox && tox"),
        ("README.md", "pip install tox && tox -e conformance"),
        ("quickstart.md", "pip install '.[conformance]'"),
        ("quickstart.md", "python3 -m venv .venv && . .venv/bin/activate"),
    ], not_run
    assert all(not_run.values())


# -- facts the README states ----------------------------------------------------------------------------------


def _options(subcommand: str) -> set[str]:
    parser = build_parser()
    sub = next(
        action
        for action in parser._actions  # argparse has no public accessor for subparsers
        if action.dest == "engine"
    )
    return {
        option
        for action in sub.choices[subcommand]._actions  # type: ignore[attr-defined]
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_readme_lists_every_worker_option() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Workers") : readme.index("## Development")]
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", section))
    served = set().union(*(_options(name) for name in ("mock", "legacy", "exllamav2", "gateway")))
    assert served - documented == set(), f"worker options missing from the README: {sorted(served - documented)}"
    assert documented - served == set(), f"README lists options the worker lacks: {sorted(documented - served)}"


def test_readme_says_what_tox_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tox = (ROOT / "tox.ini").read_text(encoding="utf-8")
    env_list = re.search(r"^env_list\s*=\s*(.+)$", tox, re.MULTILINE)
    assert env_list is not None
    line = next(line for line in readme.splitlines() if re.match(r"^\$ pip install tox && tox\s+#", line))
    for env in (name.strip() for name in env_list.group(1).split(",")):
        word = {"py": "test suite", "lint": "lint"}.get(env, env)
        assert word in line, f"README's `tox` line does not say that tox runs {env!r}: {line}"


def test_counts_of_broken_workers_are_exact() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from broken_workers.defects import DEFECTS

    for path in DOC_FILES:
        for count in re.findall(r"(\d+) (?:deliberately )?broken workers", path.read_text(encoding="utf-8")):
            assert int(count) == len(DEFECTS), f"{path.name} says {count} broken workers; defects.py has {len(DEFECTS)}"


def test_relative_links_resolve() -> None:
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_gate_examples_use_the_mock_port() -> None:
    default_port = str(build_parser().parse_args(["mock"]).port)
    assert default_port == "8000"
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"dualcall-(conformance|url)[^\n]*:8080", text), f"{path.name} gates port 8080"


def test_pyproject_has_the_browser_test_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert any(dep.startswith("playwright") for deps in extras.values() for dep in deps)


def test_browser_snippet_in_docs_is_the_spec_one() -> None:
    spec_snippets = [b.text for b in fenced_blocks(ROOT / "openapi" / "SPEC.md") if b.language == "js"]
    doc_snippets = [b.text for b in fenced_blocks(ROOT / "docs" / "contract.md") if b.language == "js"]
    assert spec_snippets and doc_snippets == spec_snippets
    playground = (ROOT / "workers" / "static" / "playground.html").read_text(encoding="utf-8")
    for idiom in ("e instanceof MessageEvent", "readyState === EventSource.CLOSED", 'e.data === "[DONE]"'):
        assert idiom in spec_snippets[0] and idiom in playground, idiom
