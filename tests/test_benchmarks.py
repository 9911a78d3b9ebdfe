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
