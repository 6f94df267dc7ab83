"""The ``jaxlmm`` command line: subcommands, CSV and Parquet input, JSON output, error exits."""

import json

import pytest

import jaxlmm as lmm
from jaxlmm.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
    df["w"] = 1.0 + (df.index % 3)
    df.to_csv(d / "d.csv", index=False)
    df.to_parquet(d / "d.parquet")
    (d / "bad.csv").write_text('a,b\n1,"2\n')
    return d


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_fit_parquet_and_csv_agree_with_profile_intervals(files, capsys):
    assert main(["fit", str(files / "d.parquet"), "y ~ time + ar1(visit | subject)", "--json", "--ci", "profile"]) == 0
    a = _json(capsys)
    assert main(["fit", str(files / "d.csv"), "y ~ time + ar1(visit | subject)", "--json", "--ddf", "kenward-roger"]) == 0
    b = _json(capsys)
    assert a["deviance"] == pytest.approx(b["deviance"], rel=1e-12)
    assert b["ddf"] == "kenward-roger" and a["ddf"] == "satterthwaite"
    rows = {r["parameter"]: r for r in a["conf_int"]["intervals"]}
    assert rows["rho"]["lower"] < a["theta"]["rho"] < rows["rho"]["upper"]


def test_fit_weights(files, capsys):
    """--weights is lmm.fit(..., weights=)."""
    import pandas as pd

    assert main(["fit", str(files / "d.csv"), "y ~ time + ar1(visit | subject)", "--json", "--weights", "w"]) == 0
    out = _json(capsys)
    res = lmm.fit("y ~ time + ar1(visit | subject)", pd.read_csv(files / "d.csv"), weights="w")
    assert out["deviance"] == pytest.approx(res.deviance, rel=1e-12)


def test_compare_ranks_structures(files, capsys):
    args = ["compare", str(files / "d.csv"), "y ~ time + arm", "--visit", "visit", "--subject", "subject",
            "--structures", "cs,ar1,arh1"]
    assert main(args + ["--json"]) == 0
    out = _json(capsys)
    assert [r["candidate"] for r in out["table"]][0] == out["best"]
    assert {(r["null"], r["alternative"]) for r in out["lrt"]} == {("ar1", "arh1")}
    assert main(args) == 0
    assert "Chosen:" in capsys.readouterr().out


def test_bootstrap_json(files, capsys):
    assert main(["bootstrap", str(files / "d.csv"), "y ~ time + ar1(visit | subject)", "-n", "40", "--seed", "3",
                 "--json"]) == 0
    out = _json(capsys)
    assert out["n"] == 40 and out["failed"] == 0
    names = [r["index"] for r in out["intervals"]]
    assert names == ["(Intercept)", "time", "sigma", "rho"]


@pytest.mark.parametrize("args,message", [
    (["fit", "{d}/missing.csv", "y ~ time"], "not found"),
    (["fit", "{d}/d.xlsx", "y ~ time"], "not found"),
    (["fit", "{d}/bad.csv", "y ~ time"], "could not read"),
    (["fit", "{d}/d.csv", "y ~ time + ar1(vist | subject)"], "Did you mean 'visit'"),
    (["compare", "{d}/d.csv", "y ~ time", "--visit", "visit", "--subject", "subject", "--structures", "un,foo"],
     "unknown structure"),
    (["compare", "{d}/d.csv", "y ~ time + ar1(visit | subject)", "--visit", "visit", "--subject", "subject"],
     "mean model only"),
    (["bootstrap", "{d}/d.csv", "y ~ time + ar1(visit | subject)", "-n", "1"], "at least 2"),
])
def test_errors_exit_2_with_one_line(files, capsys, args, message):
    args = [a.format(d=files) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxlmm: error:") and message in err and "\n" not in err


def test_power_json(capsys):
    args = ["power", "--visits", "3", "--n-per-arm", "15,30", "--effect", "0,1", "--nsim", "100",
            "--dropout", "0.1", "--mar-slope", "-0.5", "--structure", "cs", "--analysis", "ar1", "--json"]
    assert main(args) == 0
    out = _json(capsys)
    sc = out["scenarios"]
    assert len(sc) == 4 and {s["n_per_arm"] for s in sc} == {15, 30}
    by = {(s["n_per_arm"], s["effect"]): s for s in sc}
    assert by[(30, 1.0)]["power"] > by[(15, 1.0)]["power"] > by[(15, 0.0)]["power"]
    assert all(s["n_failed"] == 0 for s in sc)


@pytest.mark.parametrize("args,message", [
    (["power", "--n-per-arm", "ten"], "comma-separated numbers"),
    (["power", "--n-per-arm", "1"], "at least 2"),
    (["power", "--dropout", "1.5"], "in [0, 1)"),
    (["power", "--structure", "toep"], "is not one of"),
    (["power", "--visits", "1"], "at least 2"),
])
def test_power_errors(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxlmm: error:") and message in err and "\n" not in err
