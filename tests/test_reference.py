"""jaxlmm against nlme::gls, lme4::lmer and nlme::lme (tests/reference/, made by make_reference.R).

Tolerances (issue 2): deviance 1e-6 relative and never worse than R's; fixed effects 1e-4
relative (relative to the SE for estimates near zero); SEs 1e-3; covariance parameters 1e-3
(relative to sqrt(S_ii S_jj)); BLUPs 1e-3 of the random-effect SD.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reference"))
from compare import differences, fit_case, load_cases  # noqa: E402

CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_against_r(case):
    if CASES.index(case) % 10 == 0:  # ~90 distinct programs: release them in batches (see conftest)
        import jax

        jax.clear_caches()
    res = fit_case(case)
    assert res.converged, res.status_message
    assert res.n_obs == case["n_obs"]
    d = differences(case, res)
    assert d["deviance_signed"] < 1e-9, "jaxlmm stopped at a worse optimum than R"
    assert d["deviance"] < 1e-6
    assert d["fixef"] < 1e-4
    assert d["se"] < 1e-3
    assert d["cov"] < 1e-3
    if "G" in d:
        assert d["G"] < 1e-3
    if "blup" in d:
        assert d["blup"] < 1e-3
    if "blup_sd" in d:
        assert d["blup_sd"] < 1e-3
    if case.get("singular"):
        assert res.boundary, "R reports a singular fit; jaxlmm must flag the boundary"
