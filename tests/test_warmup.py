"""``warmup`` compiles exactly what a configuration runs: after it, the first real step
compiles nothing. Signatures are counted on the CPU dispatchers in this process."""
import json
import logging
import textwrap

import numpy as np
import pytest

import numba_adamax as na
from numba_adamax.kernels import config as kernel_config
from numba_adamax.kernels import cpu, cpu_sparse
from conftest import run_python, slow

CONFIGURATIONS = {
    "plain": {},
    "clipnorm": {"clipnorm": 1.0},
    "global_clipnorm_accumulation": {"global_clipnorm": 0.5, "gradient_accumulation_steps": 2},
    "ema_decay_scaled": {"use_ema": True, "ema_overwrite_frequency": 2, "weight_decay": 0.01,
                         "loss_scale_factor": 64.0},
    "clipvalue_skip": {"clipvalue": 0.1, "nonfinite": "skip"},
    "schedule": {"learning_rate": na.schedules.ExponentialDecay(0.01, 10, 0.5)},
}


def _signatures():
    return {d.py_func.__qualname__: len(d.signatures)
            for d in cpu.DISPATCHERS + cpu_sparse.DISPATCHERS}


def _steps(opt, variables, sparse):
    steps = opt.gradient_accumulation_steps or 1
    for _ in range(steps):
        grads = [np.full(v.shape, 0.5, v.dtype) for v in variables]
        if sparse:
            grads[1] = na.IndexedSlices(np.ones((3, 4), variables[1].dtype), np.array([2, 0, 2]))
        opt.apply(grads, variables)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_after_warmup_of_a_built_optimizer_the_first_steps_compile_nothing(name, sparse):
    variables = [np.zeros(7, np.float32), np.zeros((5, 4), np.float64)]
    opt = na.Adamax(**CONFIGURATIONS[name])
    opt.build(variables)
    na.warmup(opt, sparse=sparse)
    before = _signatures()
    _steps(opt, variables, sparse)
    assert _signatures() == before
    assert opt.iterations == 1


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_warmup_of_dtypes_and_settings_covers_both_variants(name, monkeypatch):
    monkeypatch.setattr(kernel_config, "PARALLEL_THRESHOLD", 64)
    na.warmup(["float32"], sparse=True, **CONFIGURATIONS[name])
    before = _signatures()
    for size in (8, 400):  # below and above the threshold: serial, then parallel variant
        variables = [np.zeros(size, np.float32), np.zeros((size, 4), np.float32)]
        _steps(na.Adamax(**CONFIGURATIONS[name]), variables, sparse=True)
    assert _signatures() == before


def test_warmup_of_an_unbuilt_optimizer_and_of_a_state():
    opt = na.Adamax(clipnorm=1.0)
    na.warmup(opt)
    state = na.init([np.zeros(3)], use_ema=True)
    na.warmup(state)
    before = _signatures()
    opt.apply([np.ones(3, np.float32)], [np.zeros(3, np.float32)])
    na.step(state.params, [np.ones(3)], state)
    assert _signatures() == before
    assert opt.iterations == 1 and state.raw_steps == 1


def test_warmup_changes_no_user_state():
    w = np.linspace(-1, 1, 6).astype(np.float32)
    opt = na.Adamax(use_ema=True)
    opt.build([w])
    before = [w.copy(), *(x.copy() for x in opt.variables)]
    na.warmup(opt, sparse=True)
    after = [w, *opt.variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert opt.iterations == 0


def test_warmup_logs_what_it_did(caplog):
    with caplog.at_level(logging.INFO, logger="numba_adamax"):
        na.warmup("float64", parallel=False)
    assert any("warmup" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("call, exception, match", [
    (lambda: na.warmup("float16"), TypeError, "float16"),
    (lambda: na.warmup(["float32", "int64"]), TypeError, "int64"),
    (lambda: na.warmup(3.5), TypeError, "Adamax, an AdamaxState, a dtype"),
    (lambda: na.warmup(sparse="yes"), TypeError, "`sparse` must be a bool"),
    (lambda: na.warmup(parallel=1), TypeError, "`parallel` must be None or a bool"),
    (lambda: na.warmup(na.Adamax(), clipnorm=1.0), TypeError, "settings come from"),
    (lambda: na.warmup("float32", beta_1=2.0), ValueError, "beta_1"),
])
def test_bad_warmup_arguments_raise_before_compiling(call, exception, match):
    before = _signatures()
    with pytest.raises(exception, match=match):
        call()
    assert _signatures() == before


_FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import numba_adamax as na
    from numba_adamax.kernels import cpu, cpu_sparse
    def count():
        return sum(len(d.signatures) for d in cpu.DISPATCHERS + cpu_sparse.DISPATCHERS)
    kwargs, sparse = json.loads(sys.argv[1]), sys.argv[2] == "sparse"
    variables = [np.zeros(7, np.float32), np.zeros((5, 4), np.float32)]
    opt = na.Adamax(**kwargs)
    opt.build(variables)
    na.warmup(opt, sparse=sparse)
    warmed = count()
    for _ in range(opt.gradient_accumulation_steps or 1):
        grads = [np.full(v.shape, 0.5, v.dtype) for v in variables]
        if sparse:
            grads[1] = na.IndexedSlices(np.ones((3, 4), np.float32), np.array([2, 0, 2]))
        opt.apply(grads, variables)
    print(json.dumps([warmed, count()]))
""")


@slow
@pytest.mark.parametrize("name, sparse", [("clipnorm", "dense"), ("ema_decay_scaled", "sparse"),
                                          ("global_clipnorm_accumulation", "sparse")])
def test_in_a_fresh_process_warmup_compiles_what_the_first_steps_need(name, sparse):
    kwargs = {k: v for k, v in CONFIGURATIONS[name].items()}
    result = run_python(["-c", _FRESH, json.dumps(kwargs), sparse])
    assert result.returncode == 0, result.stderr
    warmed, after = json.loads(result.stdout.strip().splitlines()[-1])
    assert warmed > 0 and after == warmed


def test_all_configurations_cover_every_signature_option_once():
    from numba_adamax import _warmup
    configurations = list(_warmup.all_configurations())
    assert len(configurations) == 48
    assert len({json.dumps(c, sort_keys=True) for c in configurations}) == 48
    for key in ("loss_scale_factor", "weight_decay", "use_ema", "gradient_accumulation_steps",
                "clipvalue", "clipnorm"):
        assert any(c.get(key) for c in configurations) and any(not c.get(key)
                                                              for c in configurations)
    for c in configurations:
        na.Adamax(**c)  # every one is a valid configuration


@slow
def test_the_warmup_command_fills_the_cache_for_one_configuration():
    result = run_python(["-m", "numba_adamax", "warmup", "--dtypes", "float64", "--variant",
                         "serial", "--use-ema", "--sparse", "--clipnorm", "1"])
    assert result.returncode == 0, result.stderr
    assert "[1/1] {'clipnorm': 1.0, 'use_ema': True}" in result.stdout
    assert "done in" in result.stdout
    bad = run_python(["-m", "numba_adamax", "warmup", "--dtypes", "float16"])
    assert bad.returncode != 0 and "float16" in bad.stderr


@slow
def test_a_long_first_compile_says_so_on_the_logger(tmp_path):
    code = textwrap.dedent("""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(name)s| %(message)s")
        import numpy as np, numba_adamax as na
        from numba_adamax.backends import compile_log
        compile_log.NOTICE_AFTER = 0.05
        na.Adamax(clipnorm=1.0).apply([np.ones(3, np.float32)], [np.zeros(3, np.float32)])
    """)
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    cold = run_python(code, env=env)
    assert cold.returncode == 0, cold.stderr
    notices = [line for line in cold.stderr.splitlines() if line.startswith("numba_adamax|")]
    assert len(notices) == 1, cold.stderr
    assert "float32" in notices[0] and "cached on disk" in notices[0]
    warm = run_python(code, env=env)  # loaded from the cache: nothing compiles, nothing said
    assert warm.returncode == 0 and "numba_adamax|" not in warm.stderr, warm.stderr


def test_the_torch_optimizer_warms_up_its_groups():
    torch = pytest.importorskip("torch")
    from numba_adamax.integrations.torch import Adamax
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    dense = torch.nn.Linear(4, 2)
    opt = Adamax([{"params": embedding.parameters()},
                  {"params": dense.parameters(), "clipnorm": 1.0}])
    opt.warmup(sparse=True)
    before = _signatures()
    dense(embedding(torch.tensor([1, 3, 1]))).sum().backward()
    opt.step()
    assert _signatures() == before
    assert int(opt.state[dense.weight]["step"]) == 1
