"""The controls the benchmarks time beside the method (issue 20): each is checked here on a tiny model, so a benchmark's
baseline is the computation its docstring says. Timing itself is never asserted."""
import sys
from pathlib import Path
import numpy as np, torch, torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent.parent/'benchmarks'))
_threads = torch.get_num_threads()
from hawq import rademacher, hutchinson_floor, func_floor
from int8_speed import op_profile, INTEGER_OPS
torch.set_num_threads(_threads)   # the benchmark sets its own 2 threads on import; this test process keeps pytest's

def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()

def _exact_hessian(m, x, y):
    "The full Hessian of the mean cross-entropy in the two weight matrices (biases fixed), flattened in target_layers order"
    ws = [m[0].weight, m[2].weight]
    shapes = [w.shape for w in ws]
    def loss(flat):
        a, b = flat[:12].view(shapes[0]), flat[12:].view(shapes[1])
        return nn.functional.cross_entropy(torch.tanh(x @ a.T + m[0].bias) @ b.T + m[2].bias, y)
    return torch.autograd.functional.hessian(loss, torch.cat([w.detach().flatten() for w in ws]))

def test_hutchinson_floor_is_v_times_exact_hessian_v():
    "One probe: the floor's map is v ⊙ Hv of the exact Hessian; the forward-over-reverse control gives the same"
    m = _mlp()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    H = _exact_hessian(m, x, y)
    v = torch.cat([t.flatten() for t in rademacher([m[0].weight, m[2].weight], 1, seed=3)[0]])
    want = v*(H @ v)
    got = torch.cat([t.flatten() for t in hutchinson_floor(m, (x, y, None), 1, seed=3)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    f = func_floor(m, (x, y, None), 1, seed=3)
    torch.testing.assert_close(torch.cat([f['0.weight'].flatten(), f['2.weight'].flatten()]), want, rtol=1e-5, atol=1e-7)

def test_floor_averages_its_probes():
    "Two probes: the mean of the two one-probe maps, with the probes drawn in the same order"
    m = _mlp()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    H = _exact_hessian(m, x, y)
    vs = [torch.cat([t.flatten() for t in p]) for p in rademacher([m[0].weight, m[2].weight], 2, seed=1)]
    want = sum(v*(H @ v) for v in vs)/2
    got = torch.cat([t.flatten() for t in hutchinson_floor(m, (x, y, None), 2, seed=1)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)

def test_op_profile_counts_the_kernels_of_the_timed_runs(tmp_path):
    "onnxruntime's profile of a two-MatMul model: both MatMul kernels are found, and an integer op is named as one"
    import onnx
    from onnx import helper, TensorProto, numpy_helper
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), 'w')
    g = helper.make_graph([helper.make_node('MatMul', ['x', 'w'], ['h']), helper.make_node('MatMul', ['h', 'w'], ['y'])], 'g',
                          [helper.make_tensor_value_info('x', TensorProto.FLOAT, [None, 64])],
                          [helper.make_tensor_value_info('y', TensorProto.FLOAT, [None, 64])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), tmp_path/'m.onnx')
    ms = op_profile(tmp_path/'m.onnx', np.ones((512, 64), np.float32), threads=1, runs=2)
    assert set(ms) <= {'MatMul', 'FusedMatMul'} and sum(ms.values()) > 0, ms
    assert 'DynamicQuantizeMatMul' in INTEGER_OPS and 'MatMul' not in INTEGER_OPS

# --- tools/bench_record.py --table: the reader of the record `make bench` writes ---
sys.path.insert(0, str(Path(__file__).parent.parent/'tools'))
import json, pytest
from bench_record import read_records, split_runs, spreads, table

def _rec(name, commit, result, date='2026-12-06T10:00:00+00:00'):
    return json.dumps(dict(benchmark=name, commit=commit, cpu_count=2, cpu_model='x', date=date, result=result))

def test_table_pairs_runs_and_keeps_every_spread(tmp_path):
    "Two runs at one commit are told apart by a repeated benchmark; each key's median and range land in its run's column"
    f = tmp_path/'results.jsonl'
    f.write_text('\n'.join([_rec('qat_step', 'abc', dict(ratio=1.07, ratio_min=0.95, ratio_max=1.12, fp32_s=0.3)),
                            _rec('mixed_onnx', 'abc', dict(results=dict(r18=dict(speed=dict(wo=0.9), speed_min=dict(wo=0.7), speed_max=dict(wo=1.1))))),
                            _rec('qat_step', 'abc', dict(ratio=1.12, ratio_min=1.0, ratio_max=1.25)),
                            _rec('qat_step', 'def', dict(ratio=1.05, ratio_min=0.9, ratio_max=1.1))]) + '\n')
    runs = split_runs(read_records(f))
    assert [[r['benchmark'] for r in run] for run in runs] == [['qat_step', 'mixed_onnx'], ['qat_step'], ['qat_step']]
    assert spreads(json.loads(f.read_text().splitlines()[1])['result']) == {'results.r18.speed.wo': (0.9, 0.7, 1.1)}
    assert 'fp32_s' not in spreads(json.loads(f.read_text().splitlines()[0])['result'])   # no spread printed: not in the table
    t = table(f, last=2).splitlines()
    assert len(t) == 2 and t[1].split()[:2] == ['qat_step', 'ratio'] and '1.12 (1–1.25)' in t[1] and '1.05 (0.9–1.1)' in t[1], t
    assert '1.07' not in '\n'.join(t)   # the oldest run is not among the last two

def test_table_names_a_bad_line(tmp_path):
    f = tmp_path/'results.jsonl'
    f.write_text(_rec('qat_step', 'abc', dict(ratio=1.0, ratio_min=1.0, ratio_max=1.0)) + '\n{"benchmark": \n')
    with pytest.raises(ValueError, match=r'results.jsonl:2: not JSON'): read_records(f)
    f.write_text('{"benchmark": "x", "commit": "a", "result": {}}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:1: .*missing \['cpu_count', 'cpu_model', 'date'\]"): read_records(f)

# --- benchmarks/harness.py: the order of the functions within rounds ---
from harness import round_order, interleaved

def test_round_order_never_repeats_across_rounds_and_balances_positions():
    "No function runs twice in a row at a round boundary; from three functions on, each takes every position once per n rounds"
    for n in (2, 3, 4, 6):
        names = [f'f{i}' for i in range(n)]
        orders = [round_order(names, i) for i in range(-1, 2*n)]
        assert all(sorted(o) == names for o in orders)
        assert all(a[-1] != b[0] for a, b in zip(orders, orders[1:])), orders
        if n >= 3:
            for pos in range(n): assert sorted(o[pos] for o in orders[1:n + 1]) == names

def test_interleaved_runs_the_rounds_in_that_order():
    calls = []
    t = interleaved({k: (lambda k=k: calls.append(k)) for k in 'abc'}, rounds=3, warmup=1)
    assert calls == round_order('abc', -1) + round_order('abc', 0) + round_order('abc', 1) + round_order('abc', 2)
    assert {k: len(v) for k, v in t.items()} == {'a': 3, 'b': 3, 'c': 3}
