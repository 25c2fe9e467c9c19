"""Correctness of the `cnn bench` machinery (never its speed): rows, JSON, and an honest torch twin.

The twin test checks, in float64, that the PyTorch network of cnncli.twin computes the same
loss, gradients, probabilities and Adam update as cnncli.model.Network with the same weights, so
`--vs-torch` compares like with like. It is skipped (with a reason) when torch is not installed.
"""

import json
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from cnncli import bench, kernel_profile, machine, twin
from cnncli.cli import cli

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (pip install torch==2.13.0)")


def _check_rate(summary):
    assert summary["median"] > 0
    assert summary["min"] <= summary["median"] <= summary["max"]
    assert all(r > 0 for r in summary["runs"])


def test_run_bench_rows_and_text():
    printed = []
    result = bench.run_bench(batchnorm="none", batch_sizes=[8], threads=1, seconds=0.05, repeats=1,
                             echo=printed.append)
    assert [(r["mode"], r["batch_size"]) for r in result["rows"]] == [("train", 8), ("infer", 8)]
    for row in result["rows"]:
        _check_rate(row["ours"])
        assert row["torch"] is None and row["ratio"] is None
        assert row["ours_gflops"] > 0
        assert row["ours_peak_fraction"] == pytest.approx(row["ours_gflops"] / result["fma_peak_gflops"])
    assert np.isfinite(result["fma_peak_gflops"]) and result["fma_peak_gflops"] > 0
    assert result["latency"]["ours"]["median_us"] > 0
    assert result["latency"]["ours"]["calls"] >= 50
    assert result["machine"]["threads"] == 1
    assert result["jit"]["train_step_s"] >= 0
    text = printed[0]
    assert "train" in text and "infer" in text and "ours img/s" in text and "ours/torch" not in text
    assert "numba" in text and "BLAS" in text
    assert "% peak" in text and f"{result['fma_peak_gflops']:,.0f} GFLOP/s" in text


def test_run_bench_names_a_cgroup_cpu_quota(monkeypatch):
    monkeypatch.setattr(machine, "cpu_limit", lambda: 1.5)
    printed = []
    result = bench.run_bench(batchnorm="none", batch_sizes=[8], threads=1, seconds=0.02, repeats=1,
                             echo=printed.append)
    assert result["machine"]["cpu_quota"] == 1.5
    assert "core(s) (a cgroup CPU quota of 1.5); 1 thread(s)" in printed[0]


@pytest.mark.parametrize("chains", [12, 6])
def test_peak_probe_computes_its_fma_chains(chains):
    """Each probe's kernel does the work its FLOP count says: 12 (or 6) chains of a = a * b + c (one
    rounding each, emulated in float64: the float32 product is exact there), summed pairwise."""
    from cnncli.kernels import peak

    x = peak.chain_inputs()
    out = np.zeros(16, np.float32)
    (peak.fma_chains_into if chains == 12 else peak.fma_chains6_into)(x, 7, out)
    a = x[2:].astype(np.float64)
    for _ in range(7):
        a = (a * np.float64(x[0]) + np.float64(x[1])).astype(np.float32).astype(np.float64)
    a = a.astype(np.float32)
    pair = lambda u, v: np.float32(u + v)  # noqa: E731
    if chains == 12:
        s = pair(pair(pair(a[0], a[1]), pair(a[2], a[3])), pair(pair(a[4], a[5]), pair(a[6], a[7])))
        s = pair(s, pair(pair(a[8], a[9]), pair(a[10], a[11])))
    else:
        s = pair(pair(pair(a[0], a[1]), pair(a[2], a[3])), pair(a[4], a[5]))
    np.testing.assert_allclose(out, np.full(16, s), rtol=2e-7)
    assert peak.CHAINS == 12 and len(x) == 2 + peak.CHAINS


def test_peak_is_the_best_probe(monkeypatch):
    """fma_peak_gflops reports the best of its probes, whichever it is (12 chains on AVX-512, 6 on AVX2)."""
    from cnncli.kernels import peak

    seen = []

    def fake(kernel, chains, x, threads, seconds, repeats):
        seen.append(chains)
        return {12: 50.0, 6: 100.0}[chains] if flip else {12: 100.0, 6: 50.0}[chains]

    monkeypatch.setattr(peak, "_probe_gflops", fake)
    for flip in (False, True):
        assert peak.fma_peak_gflops(2) == 100.0
    assert sorted(seen) == [6, 6, 12, 12]


def test_compare_bn_alternates_the_three_variants_and_divides_by_no_bn():
    printed = []
    result = bench.run_bench(batch_sizes=[4], threads=1, seconds=0.05, repeats=2, echo=printed.append,
                             compare_bn=True)
    (row,) = result["bn_vs_none"]
    assert row["batch_size"] == 4
    for variant in ("none", "unit", "channel"):
        _check_rate(row[variant])
        assert len(row[variant]["runs"]) == 2
    assert row["unit_vs_none"] == pytest.approx(row["unit"]["median"] / row["none"]["median"])
    assert row["channel_vs_none"] == pytest.approx(row["channel"]["median"] / row["none"]["median"])
    assert "channel/none" in printed[0] and f"{row['unit_vs_none']:.2f}" in printed[0]
    assert "first call: not measured (--compare-bn compiled the other variants first" in printed[0]


@pytest.mark.parametrize("bn", ["none", "channel"])
def test_functional_row_times_loss_and_grads_against_train_step(bn, monkeypatch):
    from cnncli import model

    seen = []
    real = model.loss_and_grads
    monkeypatch.setattr(model, "loss_and_grads", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    printed = []
    result = bench.run_bench(batchnorm=bn, batch_sizes=[4], threads=1, seconds=0.05, repeats=2,
                             echo=printed.append, functional=True)
    (row,) = result["functional"]
    assert row["batch_size"] == 4 and seen and set(seen) == {bn}
    for name in ("train_step", "loss_and_grads"):
        _check_rate(row[name])
        assert len(row[name]["runs"]) == 2
    assert row["functional_vs_step"] == pytest.approx(row["loss_and_grads"]["median"] / row["train_step"]["median"])
    assert "loss_and_grads/train_step" in printed[0] and f"{row['functional_vs_step']:.2f}" in printed[0]


def test_alternate_in_slices_takes_turns_and_rates_each_repeat_by_its_slices():
    calls = []

    class Fake:
        def __init__(self, name, pause):
            self.name, self.pause = name, pause

        def run(self, x, y):
            calls.append(self.name)
            time.sleep(self.pause)

    batches = [(None, np.zeros(4)), (None, np.zeros(6))]
    impls = [Fake("a", 0.002), Fake("b", 0.004)]
    res = bench._alternate(impls, lambda impl: impl.run, batches, seconds=0.06, repeats=2, warmup_seconds=0.001,
                           slice_seconds=0.02)
    turns = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
    assert turns[:2] == ["a", "b"] and len(turns) >= 2 + 2 * 3 * 2   # warm-ups, then 3 slices x 2 repeats each
    for name, pause in (("a", 0.002), ("b", 0.004)):
        assert len(res[name]["runs"]) == 2
        assert 0.5 * 5 / pause < res[name]["median"] < 1.05 * 5 / pause   # 5 images per call on average


def test_compare_bn_needs_two_images_per_batch():
    res = CliRunner().invoke(cli, ["bench", "--compare-bn", "--batch-sizes", "1,8", "--seconds", "0.1"])
    assert res.exit_code == 1 and "--batch-sizes" in res.output and "Traceback" not in res.output


def test_run_bench_rejects_unknown_variant():
    from cnncli.errors import CnnError

    with pytest.raises(CnnError, match="batchnorm"):
        bench.run_bench(batchnorm="layer", batch_sizes=[8], seconds=0.05, repeats=1, echo=lambda s: None)


def test_cli_bench_json_parses():
    res = CliRunner().invoke(cli, ["bench", "--batchnorm", "channel", "--batch-sizes", "8,4", "--seconds", "0.1",
                                   "--repeats", "2", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["settings"]["batchnorm"] == "channel"
    assert data["settings"]["repeats"] == 2
    assert [(r["mode"], r["batch_size"]) for r in data["rows"]] == [("train", 8), ("train", 4), ("infer", 8), ("infer", 4)]
    for row in data["rows"]:
        _check_rate(row["ours"])
        assert len(row["ours"]["runs"]) == 2


def test_cli_bench_bad_batch_sizes():
    res = CliRunner().invoke(cli, ["bench", "--batch-sizes", "8,x"])
    assert res.exit_code == 2
    assert "--batch-sizes" in res.output


def test_cli_vs_torch_without_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    res = CliRunner().invoke(cli, ["bench", "--vs-torch", "--batch-sizes", "8", "--seconds", "0.1", "--repeats", "1"])
    assert res.exit_code == 1
    assert "pip install torch==2.13.0" in res.output
    assert "Traceback" not in res.output


@needs_torch
def test_cli_vs_torch_rows_have_ratios():
    res = CliRunner().invoke(cli, ["bench", "--vs-torch", "--batch-sizes", "8", "--seconds", "0.1", "--repeats", "1",
                                   "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["machine"]["torch"] == torch.__version__
    assert data["machine"]["torch_threads"] == 1
    for row in data["rows"]:
        _check_rate(row["torch"])
        assert row["ratio"] == pytest.approx(row["ours"]["median"] / row["torch"]["median"])
    assert data["latency"]["torch"]["median_us"] > 0


@needs_torch
@pytest.mark.parametrize("batchnorm", ["none", "unit", "channel"])
def test_torch_twin_matches_network_in_float64(batchnorm):
    ours = bench.Ours(num_classes=5, batchnorm=batchnorm, seed=3, dtype=np.float64)
    rng = np.random.default_rng(1)
    # non-trivial BN parameters and buffers, so a wrongly mapped gamma/beta/running stat would show
    for name, arr in ours.net.params.items():
        if name.startswith("bn") or name.endswith(".b"):
            arr[...] = rng.uniform(0.5, 1.5, arr.shape) if name.endswith("gamma") else rng.normal(0, 0.2, arr.shape)
    for name, arr in ours.net.buffers.items():
        arr[...] = rng.uniform(0.5, 2.0, arr.shape) if name.endswith("var") else rng.normal(0, 0.3, arr.shape)
    tw = twin.Torch(ours.net, batchnorm)
    x = rng.standard_normal((6, 1, 32, 32))           # (N,1,32,32) float64
    y = rng.integers(0, 5, 6)                         # (N,)

    # inference mode (running statistics)
    p_ours = ours.infer(x)
    p_twin = tw.infer(x).numpy()
    np.testing.assert_allclose(p_twin, p_ours, rtol=1e-10, atol=1e-12)

    # training mode: loss, every gradient, running statistics
    loss_ours, _ = ours.net.train_step(x, y)
    tw.model.train()
    tw.opt.zero_grad(set_to_none=True)
    loss_twin, _ = twin.torch_loss(tw.model, torch.from_numpy(x), torch.from_numpy(y))
    loss_twin.backward()
    assert loss_ours == pytest.approx(loss_twin.item(), rel=1e-12)
    named = dict(tw.model.named_parameters())
    assert {twin.our_name(k) for k in named} == set(ours.net.grads)
    for tname, p in named.items():
        np.testing.assert_allclose(p.grad.numpy(), ours.net.grads[twin.our_name(tname)], rtol=1e-8, atol=1e-11,
                                   err_msg=tname)
    state = tw.model.state_dict()
    for name, arr in ours.net.buffers.items():
        np.testing.assert_allclose(state[name].numpy(), arr, rtol=1e-10, atol=1e-12, err_msg=name)

    # one Adam step on each side from the very same gradients (under BN the conv/fc bias gradients are
    # zero up to rounding, and Adam would amplify that rounding noise into the update)
    with torch.no_grad():
        for tname, p in named.items():
            p.grad.copy_(torch.from_numpy(ours.net.grads[twin.our_name(tname)]))
    ours.opt.step(ours.net.params.flat, ours.net.grads.flat, ours.lr)
    tw.opt.step()
    for tname, p in named.items():
        np.testing.assert_allclose(p.detach().numpy(), ours.net.params[twin.our_name(tname)], rtol=1e-9, atol=1e-12,
                                   err_msg=tname)


@needs_torch
def test_torch_twin_rejects_mismatched_layout():
    ours = bench.Ours(num_classes=3, batchnorm="channel")
    params = dict(ours.net.params)
    params["bn9.gamma"] = params.pop("bn1.gamma")
    with pytest.raises((ValueError, KeyError)):
        twin.build_torch_twin(params, ours.net.buffers, "channel")


def test_profile_step_accounts_for_the_step_and_restores_kernels():
    from cnncli import model, passes
    from cnncli.kernels import conv16, fc

    def kernels():
        return {(m.__name__, k): v for m in machine.compute_modules() + [model, passes] for k, v in vars(m).items()
                if k.endswith("_into")}

    from cnncli import shards

    before, compiling = kernels(), shards._compiling
    profs = {mode: kernel_profile.profile_step(batchnorm="none", batch_size=8, steps=2, threads=1, mode=mode)
             for mode in ("train", "infer")}
    bn = kernel_profile.profile_step(batchnorm="channel", batch_size=8, steps=2, threads=1, mode="train")
    # the step runs kernel by kernel under the profiler, not as the one-call step
    for prof, layer in ((profs["train"], "conv16_forward"), (bn, "bn1_conv2_moments")):
        calls = [r["call"] for r in prof["rows"]]
        assert any(c.startswith(layer) for c in calls) and not any(c.startswith(("bn_step", "plain_step"))
                                                                   for c in calls), calls
    assert kernels() == before and shards._compiling is compiling
    assert model.np is np and passes.np is np and fc.np is np and conv16.np is np
    calls = {}
    for mode, prof in profs.items():
        timed = [r for r in prof["rows"] if r["calls_per_step"]]
        assert timed, f"{mode}: no kernel or numpy call was timed"
        assert sum(r["share"] for r in prof["rows"]) == pytest.approx(1.0)
        assert sum(r["ms_per_step"] for r in prof["rows"]) == pytest.approx(prof["step_ms"])
        assert any(r["gflops"] for r in timed), f"{mode}: no conv/matmul FLOPs recognised"
        assert all(r["ms_per_step"] >= 0 for r in timed)
        calls[mode] = sum(r["calls_per_step"] for r in timed)
        assert "ms/step" in kernel_profile.format_profile(prof)
    assert calls["train"] > calls["infer"]  # the backward pass adds calls


@pytest.mark.parametrize("bn, phases, tasks", [("none", 1, 1), ("channel", 14, 1)])
def test_profile_phases_times_every_phase_of_the_step_and_restores_each(bn, phases, tasks):
    """In one process, without BN the step is plainstep's one job, a task per thread (one here); with
    BN bnstep's 14 segments from its clock marks, a task per thread."""
    from cnncli import shards
    from cnncli.kernels import bnstep

    each, together, step = shards.each, shards.run_together, bnstep.bn_step_into
    prof = kernel_profile.profile_phases(batchnorm=bn, batch_size=20, steps=2, threads=1)
    assert shards.each is each and shards.run_together is together and bnstep.bn_step_into is step
    rows = prof["rows"]
    assert len(rows) == phases and len({r["phase"] for r in rows}) == phases
    assert all(r["tasks"] == tasks for r in rows)
    assert all(0 < r["busy_ms"] <= r["wall_ms"] * 1.01 for r in rows)   # one thread: tasks inside the phase
    assert sum(r["wall_ms"] for r in rows) + prof["serial_ms"] == pytest.approx(prof["step_ms"])
    assert prof["serial_ms"] > 0
    assert "us/task" in kernel_profile.format_phases(prof)


def test_run_bench_restores_thread_counts():
    import numba

    before = numba.get_num_threads()
    api = machine.openblas_threads_api()
    blas_before = api[0]() if api else None
    bench.run_bench(batch_sizes=[4], threads=1, seconds=0.05, repeats=1, echo=lambda s: None)
    assert numba.get_num_threads() == before
    if api:
        assert api[0]() == blas_before


def test_kernel_flops_of_batched_matmul_and_conv():
    w, cols = np.zeros((16, 150)), np.zeros((32, 150, 256))
    assert kernel_profile.kernel_flops("matmul", (w, cols)) == 2 * 32 * 16 * 150 * 256
    xp, wc, b, z = np.zeros((4, 6, 20, 20)), np.zeros((16, 6, 5, 5)), np.zeros(16), np.zeros((4, 16, 16, 16))
    assert kernel_profile.kernel_flops("conv2d_forward", (xp, wc, b, z)) == 2 * z.size * 150
    assert kernel_profile.kernel_flops("elu_forward", (z, z)) is None
    # the 16-lane kernels the training step runs: the same counts as the plain convolutions
    dzt, dwt = np.zeros((4, 256, 16)), np.zeros((6, 5, 5, 16))
    assert kernel_profile.kernel_flops("conv16_forward", (xp, wc, z)) == 2 * z.size * 150
    assert kernel_profile.kernel_flops("conv16_backward_dx", (z, wc, np.zeros((4, 16, 20, 20)), xp)) == 2 * z.size * 150
    assert kernel_profile.kernel_flops("conv16_backward_dw", (z, xp, dzt, dwt)) == 2 * z.size * 150
    z1, w1 = np.zeros((4, 6, 32, 32)), np.zeros((6, 1, 5, 5))
    assert kernel_profile.kernel_flops("conv32_forward", (np.zeros((4, 1, 36, 36)), w1, z1)) == 2 * z1.size * 25
    assert kernel_profile.kernel_flops("conv32_backward_dw", (z1, None, w1, None)) == 2 * z1.size * 25


def test_cli_bench_batchnorm_needs_two_images():
    res = CliRunner().invoke(cli, ["bench", "--batchnorm", "unit", "--batch-sizes", "1,8", "--seconds", "0.1"])
    assert res.exit_code == 1
    assert "--batch-sizes" in res.output and "at least 2" in res.output
    assert "Traceback" not in res.output


def test_compare_bn_compiles_the_other_variants_first_saying_so(monkeypatch):
    # `cnn bench --compare-bn` on an empty cache compiled the BN kernels for ~2 minutes without a word
    from cnncli import bench, precompile

    started = []

    class Done:
        def wait(self):
            started.append("waited")
    monkeypatch.setattr(precompile, "start", lambda bn, opt, say=None, augment=True: (started.append((bn, say)),
                                                                                       Done())[1])
    monkeypatch.setattr(bench, "_measure_all", lambda *a: {"rows": []})
    monkeypatch.setattr(bench, "_measure_bn_row", lambda *a: {})
    monkeypatch.setattr(bench, "format_result", lambda result: "")
    bench.run_bench(compare_bn=True, batch_sizes=(32,), seconds=0.01, repeats=1, echo=lambda text: None)
    assert started == [("unit", precompile.stderr_line), "waited", ("channel", precompile.stderr_line), "waited"]
