"""JAX's multi-process runtime: two processes on localhost (two CPU devices each, coordinator on
127.0.0.1) fit one global batch, bootstrap and power study; every number is bit-identical to
one process with one device."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

WORKER = textwrap.dedent(
    """
    import sys
    rank, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import jaxlmm as lmm
    if nproc > 1:
        lmm.initialize_distributed(f"127.0.0.1:{port}", nproc, rank)
    import jax
    import numpy as np
    d = lmm.simulate_longitudinal(30, 4, cov="ar1", seed=21, missing="monotone", missing_rate=0.3)
    model = lmm.Model("y ~ time + arm + ar1(visit | subject)", d)
    res = model.fit()
    Y = model.simulate({"fixef": res.fixef, "theta": res.theta}, n=150, seed=3).to_numpy().T.copy()
    Y[7, :5] = np.nan  # replicates with their own missing cells: the general path
    b = model.fit_batch(Y)
    bt = res.bootstrap(n=200, seed=1, progress=False)
    th = {"sd[V1]": 1.0, "sd[V2]": 1.2, "sd[V3]": 1.5, "corr[V1,V2]": 0.5, "corr[V1,V3]": 0.4,
          "corr[V2,V3]": 0.6}
    pw, reps = lmm.power("y ~ arm * visit + un(visit | subject)", lmm.Design(20, visits=("V1", "V2", "V3")),
                         lmm.Truth({"(Intercept)": 1.0}, th), {"arm[T.TRT]": 1.0, "arm[T.TRT]:visit[T.V3]": 1.0},
                         grid={"effect": [0.0, 1.0]}, nsim=100, seed=5, replicates=True, progress=False)
    assert jax.process_count() == nproc and len(jax.devices()) == 2 * nproc - (nproc == 1)
    if rank == 0:
        np.savez(out, fixef=b.fixef, dev=b.deviance, st=b.status, bfix=bt.batch.fixef, bdev=bt.batch.deviance,
                 pest=reps["estimate"].to_numpy(), pse=reps["std_error"].to_numpy(), power=pw["power"].to_numpy())
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(n_dev):
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    e.update(JAX_PLATFORMS="cpu", JAXLMM_CACHE="0", XLA_FLAGS=f"--xla_force_host_platform_device_count={n_dev}")
    return e


def _start(script, rank, nproc, port, out, n_dev):
    return subprocess.Popen([sys.executable, str(script), str(rank), str(nproc), str(port), str(out)],
                            env=_env(n_dev), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=900):
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("a worker process did not finish")
    assert proc.returncode == 0, text[-4000:]


def test_two_processes_are_bit_identical_to_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    port = _free_port()
    procs = [_start(script, r, 2, port, two, 2) for r in range(2)]
    for p in procs:
        _finish(p)
    _finish(_start(script, 0, 1, 0, one, 1))
    a, b = np.load(one), np.load(two)
    assert set(a.files) == set(b.files)
    for k in a.files:
        assert np.array_equal(a[k], b[k], equal_nan=True), k
    assert np.isfinite(a["dev"]).all() and np.isfinite(a["pest"]).all()


def test_cli_distributed_flag(tmp_path):
    import jaxlmm as lmm

    data = tmp_path / "d.csv"
    lmm.simulate_longitudinal(30, 4, cov="ar1", seed=4).to_csv(data, index=False)
    cmd = [sys.executable, "-m", "jaxlmm.cli", "bootstrap", str(data), "y ~ time + arm + ar1(visit | subject)",
           "-n", "128", "--seed", "2", "--json"]
    port = _free_port()
    procs = [subprocess.Popen(cmd + ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                     "--process-id", str(r)], env=_env(2), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:] + outs[1][1][-3000:]
    single = subprocess.run(cmd, env=_env(1), capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    assert outs[0][0] == single.stdout and single.stdout.strip().startswith("{")
    assert outs[1][0] == ""  # only process 0 prints


def test_initialize_distributed_checks_its_arguments():
    import jaxlmm as lmm

    with pytest.raises(lmm.ArgumentError, match="num_processes"):
        lmm.initialize_distributed("127.0.0.1:1", num_processes="2", process_id=0)
    with pytest.raises(lmm.ArgumentError, match="process_id"):
        lmm.initialize_distributed("127.0.0.1:1", num_processes=2, process_id=-1)
