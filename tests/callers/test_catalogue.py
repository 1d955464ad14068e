"""The caller rules exist once: SPEC.md's DC-C section, the registry, the scenarios and docs/callers.md agree."""

from __future__ import annotations

import re
from pathlib import Path

from conformance.callers.catalogue import catalogue_markdown
from conformance.callers.rules import RULES
from conformance.callers.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "SPEC.md"
CALLERS_MD = ROOT / "docs" / "callers.md"
CALLER_HEADING = re.compile(r"^### (DC-C-\d+) \((MUST|SHOULD|MAY)\) (.+)$", re.MULTILINE)


def spec_caller_rules() -> dict[str, str]:
    text = SPEC.read_text(encoding="utf-8")
    start = text.index("## DC-C Callers")
    section = text[start : text.index("\n## ", start + 1)]
    return {rule_id: level for rule_id, level, _ in CALLER_HEADING.findall(section)}


def test_registry_matches_the_spec() -> None:
    assert {rule.rule: rule.level for rule in RULES} == spec_caller_rules()


def test_caller_section_sits_after_dc5_and_before_the_legacy_shape() -> None:
    text = SPEC.read_text(encoding="utf-8")
    assert text.index("## DC-5 Service") < text.index("## DC-C Callers") < text.index("## The legacy direct-SSE shape")


def test_check_ids_are_unique_and_numbered_like_their_rules() -> None:
    ids = [rule.check_id for rule in RULES]
    assert len(ids) == len(set(ids))
    for rule in RULES:
        assert int(rule.check_id.rsplit("-", 1)[1]) == int(rule.rule.rsplit("-", 1)[1])


def test_every_rule_but_dc_c_1_has_a_scenario_and_every_scenario_a_known_rule() -> None:
    known = {rule.rule for rule in RULES}
    for scenario in SCENARIOS:
        assert scenario.rules and set(scenario.rules) <= known, scenario.name
    untargeted = {rule.rule for rule in RULES if not rule.scenarios}
    assert untargeted == {"DC-C-1"}  # checked on every submit of every scenario
    assert len({scenario.name for scenario in SCENARIOS}) == len(SCENARIOS)


def test_docs_callers_md_is_generated_from_the_registry() -> None:
    """docs/callers.md is generated: `dualcall-conformance serve-callers --list --markdown > docs/callers.md`."""
    assert CALLERS_MD.read_text(encoding="utf-8") == catalogue_markdown(), (
        "docs/callers.md is out of date: regenerate it with "
        "`dualcall-conformance serve-callers --list --markdown > docs/callers.md`"
    )


def test_expected_texts_are_hostile_and_known() -> None:
    text = SCENARIOS[0].expected_text
    assert text is not None
    for piece in ("\n", "\r\n", "data: [DONE]", "日本語", "🙂"):
        assert piece in text
    failing = {scenario.name for scenario in SCENARIOS if scenario.expected_text is None}
    assert failing == {"busy", "error-event", "dead-stream"}
