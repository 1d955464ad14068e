"""Runs the selected checks against one target and returns the `Report`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from conformance import __version__
from conformance.checks import AREAS, Check, CheckFailed, CheckSkipped, load_all
from conformance.context import Context, Options
from conformance.contract import contract_version
from conformance.fuzz import FUZZ_CHECKS, run_fuzz
from conformance.model import CheckResult, CheckSpec, Level, Outcome, Report, Threshold
from conformance.probe import Probe, TargetUnreachable

AREA_ORDER = ("legacy", "submit", "stream", "params", "job", "lifetime", "fuzz", "service")
#: checks that sweep the evidence of all the others run last
SWEEPS = ("DC-SVC-004", "DC-SVC-006")


@dataclass(frozen=True, slots=True)
class RunConfig:
    target: str
    options: Options = Options()
    threshold: Threshold = "must"
    only: frozenset[str] | None = None
    fuzz: bool = True
    max_examples: int = 25
    seed: int | None = 0


def catalogue() -> list[CheckSpec]:
    """Every check in run order (the source of `--list` and the docs' catalogue)."""
    registry = load_all()
    specs = [check.spec for check in registry.values()] + list(FUZZ_CHECKS)
    return sorted(specs, key=lambda spec: (spec.id in SWEEPS, AREA_ORDER.index(spec.area)))


def unknown_ids(ids: Sequence[str]) -> list[str]:
    known = {spec.id for spec in catalogue()}
    return [check_id for check_id in ids if check_id not in known]


def outcome_for(level: Level, threshold: Threshold) -> Outcome:
    """What a broken rule means for the run: MUST fails; SHOULD fails only at --level should."""
    if level == "MUST" or (level == "SHOULD" and threshold == "should"):
        return "failed"
    return "warning"


def preflight(probe: Probe) -> None:
    """Fail fast (CLI exit 2) when the target does not speak HTTP at all."""
    try:
        probe.http.get(probe.base_url + "/health", timeout=min(probe.timeout_s, 10.0))
    except httpx.ConnectError as exc:
        raise TargetUnreachable(f"cannot connect to {probe.base_url}: {exc}") from None
    except httpx.TimeoutException:
        raise TargetUnreachable(f"{probe.base_url} did not answer within {probe.timeout_s:g}s") from None
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise TargetUnreachable(f"{probe.base_url} does not speak HTTP: {exc}") from None
    except httpx.HTTPError as exc:
        raise TargetUnreachable(f"{probe.base_url}: {type(exc).__name__}: {exc}") from None


def run_check(check: Check, ctx: Context, threshold: Threshold) -> CheckResult:
    spec = check.spec
    started = time.perf_counter()
    with ctx.probe.recording() as exchanges:
        try:
            level = check.level(ctx)
            message = check.func(ctx) or "ok"
            outcome: Outcome = "passed"
            details: list[str] = []
        except CheckFailed as exc:
            outcome, message, details = outcome_for(level, threshold), exc.message, exc.details
        except CheckSkipped as exc:
            outcome, message, details = "skipped", str(exc), []
        except httpx.HTTPError as exc:
            outcome = outcome_for(spec.level, threshold)
            message, details = f"HTTP failure during the check: {type(exc).__name__}: {exc}", []
            level = spec.level
        except Exception as exc:  # a check must never take the run down; say what broke
            outcome = outcome_for(spec.level, threshold)
            message, details = f"the worker's answers broke the check: {type(exc).__name__}: {exc}", []
            level = spec.level
    return CheckResult(
        id=spec.id,
        rule=spec.rule,
        level=level,
        title=spec.title,
        outcome=outcome,
        message=message,
        exchanges=list(exchanges[-6:]),
        details=details,
        duration_s=time.perf_counter() - started,
    )


def run(
    config: RunConfig,
    *,
    on_start: Callable[[CheckSpec], None] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> Report:
    """Run the catalogue. Raises `TargetUnreachable` before any check when nothing answers HTTP."""
    probe = Probe(config.target, token=config.options.token, timeout_s=config.options.timeout_s)
    report = Report(
        target=config.target,
        contract_version=contract_version(),
        threshold=config.threshold,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        suite_version=__version__,
    )
    started = time.perf_counter()
    try:
        preflight(probe)
        ctx = Context(probe=probe, options=config.options)
        registry = load_all()
        health = ctx.health()
        if health:
            report.worker = {key: health[key] for key in ("engine", "model", "contract_version") if key in health}
        for spec in catalogue():
            if config.only is not None and spec.id not in config.only:
                continue
            if spec.area == "fuzz":
                continue
            if on_start:
                on_start(spec)
            result = run_check(registry[spec.id], ctx, config.threshold)
            report.results.append(result)
            if on_result:
                on_result(result)
        fuzz_ids = {spec.id for spec in FUZZ_CHECKS}
        wanted = fuzz_ids if config.only is None else fuzz_ids & config.only
        if config.fuzz and wanted:
            if on_start:
                on_start(FUZZ_CHECKS[0])
            for result in run_fuzz(
                config.target,
                token=config.options.token,
                max_examples=config.max_examples,
                timeout_s=config.options.timeout_s,
                seed=config.seed,
            ):
                if result.id not in wanted:
                    continue
                if result.outcome == "failed":
                    result.outcome = outcome_for(result.level, config.threshold)
                position = next((i for i, r in enumerate(report.results) if r.id in SWEEPS), len(report.results))
                report.results.insert(position, result)
                if on_result:
                    on_result(result)
        report.diagnoses = ctx.diagnoses
    finally:
        probe.close()
        report.duration_s = time.perf_counter() - started
    return report


__all__ = ["AREAS", "RunConfig", "TargetUnreachable", "catalogue", "run"]
