"""Nested and crossed random effects against lme4, lmerTest, pbkrtest and nlme.

The datasets are made by jaxlmm's simulators (``tests/reference/multilevel/make_data.py``), the
references by ``make_reference.R`` beside them (``reference.json``); ``multilevel_compare.py`` there
computes the differences (and prints the worst per quantity when run).  Tolerances
(``multilevel_compare.TOLERANCE``): deviance 1e-6 relative and never higher than R's by more than that;
fixed effects 1e-4, SEs, variance components, BLUPs and conditional SDs 1e-3; df, F and
KR-adjusted SEs 1e-4; profile limits 1e-3.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reference" / "multilevel"))
from multilevel_compare import TOLERANCE, differences, fit_case, fitted, load_cases  # noqa: E402

CASES = load_cases()
IDS = [f"{c['case']}-{'reml' if c['reml'] else 'ml'}" for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_against_r(case):
    res = fit_case(case)
    assert res.converged, res.status_message
    assert res.n_obs == case["n_obs"]
    d = differences(case)
    if "singular_matches" in d:
        assert d.pop("singular_matches") == 1.0, "boundary flag differs from lme4's isSingular"
    over = {k: v for k, v in d.items() if v > TOLERANCE[k]}
    assert not over, over
    assert set(d) >= {"deviance", "fixef", "se", "variance_sd", "blup"}


def test_every_kind_of_reference_is_compared():
    kinds = set()
    for c in CASES:
        kinds |= {k for k in ("satterthwaite", "kenward_roger", "profile", "lrt", "phi") if k in c}
    assert kinds == {"satterthwaite", "kenward_roger", "profile", "lrt", "phi"}
    # the likelihood-ratio tests use the boundary mixture for the added variance component
    import jaxlmm as lmm

    for c in CASES:
        if "lrt" in c:
            out = lmm.lrt(fitted(c["lrt"]["jaxlmm_small"], c["dataset"], False), fit_case(c))
            assert out["reference"] == "0.5*chi2(0) + 0.5*chi2(1)"
            assert fitted(c["lrt"]["jaxlmm_small"], c["dataset"], False).deviance == pytest.approx(
                c["lrt"]["small_deviance"], rel=1e-6)
