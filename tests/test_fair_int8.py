"Stage 45_fair_int8: localisation finds a broken layer, the fallback's claims hold on its own CSV, the calibration check flags a missing group"
import copy, json, warnings

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import numpy_helper

from fairquant.core import require_stage
from fairquant.datasets import open_stage_dataset
from fairquant.onnx_int8 import load_onnx, read_onnx_meta, calibration_mix
from fairquant.fair_int8 import (example_int8_run, val_subset, quantized_layers, localise_onnx, layer_ranking, keep_float,
                                 fallback_search, logits, clipped_shares, calibration_check, CalibrationWarning, int8_fair,
                                 _producers, _consumers, localisation_probes, optimized_ops, probe_model, dequantize, session)

TAG = 'resnet18'


@pytest.fixture(scope='module')
def ex(tmp_path_factory):
    run = example_int8_run(tmp_path_factory.mktemp('run')/'run', tags=('resnet18',))
    ds, d = open_stage_dataset(run), run/'40_onnx_int8'/TAG
    f, q = load_onnx(d/f'{TAG}-fp32.onnx'), load_onnx(d/f'{TAG}-int8-static.onnx')
    x, y, c, _ = val_subset(ds, read_onnx_meta(d/f'{TAG}-fp32.onnx')['data_config'])
    # the example's models are near chance: score against FP32's own predictions, so every changed prediction is a loss
    y = logits(f, x).argmax(1)
    t0 = localise_onnx(f, q, x[:40], c[:40], ds.groups, progress=False)
    return dict(run=run, ds=ds, f=f, q=q, x=x, y=y, c=c, rank0=layer_ranking(t0))


def broken(q, node_name, factor=1e-3):
    "A copy of `q` whose layer `node_name` has its weight scale multiplied by `factor` (weights forced into a tiny range)"
    m = copy.deepcopy(q); inits, prod = {i.name: i for i in m.graph.initializer}, _producers(m.graph)
    n = [n for n in m.graph.node if n.name == node_name][0]
    s = n.input[3] if n.op_type == 'MatMulIntegerToFloat' else prod[n.input[1]].input[1]
    inits[s].CopyFrom(numpy_helper.from_array((numpy_helper.to_array(inits[s])*factor).astype(np.float32), s))
    return m


@pytest.mark.parametrize('node', ['/layer2/layer2.1/conv1/Conv', '/layer4/layer4.1/conv2/Conv'])
def test_broken_layer_ranked_first(ex, node):
    assert ex['rank0'][0] != node                           # the fixture: not first before it is broken
    tb = localise_onnx(ex['f'], broken(ex['q'], node), ex['x'][:40], ex['c'][:40], ex['ds'].groups, progress=False)
    assert layer_ranking(tb)[0] == node


def test_fallback_claims_hold_on_its_csv(ex, tmp_path):
    b = broken(ex['q'], '/layer1/layer1.0/conv1/Conv')
    tb = localise_onnx(ex['f'], b, ex['x'], ex['c'], ex['ds'].groups, progress=False)
    eps = 1.0
    steps, res = fallback_search(b, ex['f'], layer_ranking(tb), ex['x'], ex['y'], ex['c'], ex['ds'].groups, eps, progress=False)
    steps.to_csv(tmp_path/'fallback.csv', index=False)
    s = pd.read_csv(tmp_path/'fallback.csv')
    assert res['met'] and res['n_float'] >= 1                      # the broken layer costs a group > ε: the search must work
    assert s.worst_group_drop_pp.iloc[-1] <= eps                    # meets ε, recomputed from its CSV
    assert (s.worst_group_drop_pp.iloc[:-1] > eps).all()           # no earlier step met it: not one float layer too many
    assert json.loads(s.float_layers.iloc[-1]) == res['float_layers'] and len(res['float_layers']) == res['n_float']
    assert res['evaluations'] <= res['n_float'] + 2
    # and the chosen model, rebuilt from the CSV's layers, really gives that drop
    fp = logits(ex['f'], ex['x']).argmax(1)
    p = logits(keep_float(b, ex['f'], json.loads(s.float_layers.iloc[-1])), ex['x']).argmax(1)
    drop = max(100*((fp == ex['y'])[ex['c'] == j].mean() - (p == ex['y'])[ex['c'] == j].mean()) for j in range(len(ex['ds'].groups)))
    assert abs(drop - s.worst_group_drop_pp.iloc[-1]) < 1e-9


def test_fallback_says_when_eps_cannot_be_met(ex):
    b = broken(broken(ex['q'], '/conv1/Conv'), '/fc/Gemm', 1e-4)
    layers = quantized_layers(b, ex['f']).layer.tolist()
    order = [l for l in layers if l != '/fc/Gemm'] + ['/fc/Gemm']   # the broken head last: it is never made float
    steps, res = fallback_search(b, ex['f'], order, ex['x'][:24], ex['y'][:24], ex['c'][:24], ex['ds'].groups, 0.0, progress=False)
    assert not res['met'] and res['n_float'] == len(layers) - 1 and len(steps) == len(layers)
    assert 'not met: with all but one of the 21 layers float' in res['reason']


def test_keep_float_all_layers_restores_most_of_fp32(ex):
    layers = quantized_layers(ex['q'], ex['f']).layer.tolist()
    ref, q = logits(ex['f'], ex['x']), logits(ex['q'], ex['x'])
    m = keep_float(ex['q'], ex['f'], layers); onnx.checker.check_model(m)
    assert np.abs(logits(m, ex['x']) - ref).max() < 0.5*np.abs(q - ref).max()


def test_calibration_check_flags_a_missing_group(ex):
    ds = ex['ds']
    man = pd.read_csv(ex['run']/'40_onnx_int8'/'calibration'/'manifest.csv')
    clip = clipped_shares(ex['f'], ex['q'], ex['x'], ex['c'], ds.groups)
    _, ok = calibration_check(calibration_mix(man, ds, 'val'), clip, warn=False)
    assert not [m for m in ok if 'calibration image' in m]
    only_light = man[man.group == 'light']
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        _, msgs = calibration_check(calibration_mix(only_light, ds, 'val'), clip)
    assert any("group 'dark' has 0 calibration image(s)" in m for m in msgs)
    assert any(issubclass(x.category, CalibrationWarning) and "'dark'" in str(x.message) for x in w)


def test_bad_inputs(ex, tmp_path):
    with pytest.raises(FileNotFoundError, match='no output of stage 40_onnx_int8'):
        require_stage(tmp_path, '40_onnx_int8', 'models.json', needed_by='45_fair_int8')
    m = copy.deepcopy(ex['q']); del m.metadata_props[:]; onnx.save(m, tmp_path/'foreign.onnx')
    with pytest.raises(ValueError, match='foreign.onnx: no FairQuant metadata'):
        read_onnx_meta(tmp_path/'foreign.onnx', classes=ex['ds'].classes, groups=ex['ds'].groups)
    with pytest.raises(ValueError, match='max_worst_group_drop_pp=-0.5: must be ≥ 0'):
        fallback_search(ex['q'], ex['f'], quantized_layers(ex['q'], ex['f']).layer.tolist(), ex['x'], ex['y'], ex['c'], ex['ds'].groups, -0.5)
    with pytest.raises(ValueError, match='eps=-1 must be ≥ 0'): int8_fair(-1)


def test_probed_int8_resnet_keeps_integer_kernels(ex):
    "The INT8 probe reads QuantizeLinear outputs: onnxruntime still fuses every Conv into QLinearConv (the float read-out did not)"
    L = quantized_layers(ex['q'], ex['f'])
    assert (L.probe == 'int8').all() and len(L) == 21
    ops = optimized_ops(localisation_probes(ex['q'], ex['f'], L)['int8'])
    assert (ops.get('QLinearConv', 0), ops.get('QGemm', 0), ops.get('Conv', 0)) == (20, 1, 0), ops
    old = optimized_ops(probe_model(ex['q'], [*L.out_int8, *L.in_int8]))   # every layer's float output and input, as before
    assert (old.get('QLinearConv', 0), old.get('Conv', 0)) == (0, 20), old


def test_dequantized_q_output_is_onnxruntimes_dequantizelinear(ex):
    "dequantize(Q output) equals, bit for bit, the graph's own DequantizeLinear of that Q output, run by onnxruntime"
    P = localisation_probes(ex['q'], ex['f'])
    cons = _consumers(ex['q'].graph)
    dq = {t: [c for c in cons[t] if c.op_type == 'DequantizeLinear'][0].output[0] for t in P['qparams']}
    assert len(dq) >= 21
    m = probe_model(ex['q'], [*dq, *dq.values()], {t: onnx.TensorProto.UINT8 for t in dq})
    out = session(m).run(None, {'input': np.ascontiguousarray(ex['x'][:8])})
    got = dict(zip([o.name for o in session(m).get_outputs()], out))
    for t, d in dq.items():
        assert got[t].dtype == np.uint8
        np.testing.assert_array_equal(dequantize(got[t], *P['qparams'][t]), got[d])


def test_localise_compares_what_flows(ex):
    "Each int8-probed layer's SQNR equals one recomputed from the INT8 model's own DequantizeLinear output and FP32's tensor at that point"
    L = quantized_layers(ex['q'], ex['f']).set_index('layer')
    r = L.loc['/layer3/layer3.0/conv1/Conv']              # a removed ReLU: FP32 is compared after it
    assert r.out_ref != r.out_fp32 and r.probe == 'int8'
    dq = [c for c in _consumers(ex['q'].graph)[r.out_q] if c.op_type == 'DequantizeLinear'][0].output[0]
    x, c = ex['x'][:40], ex['c'][:40]
    a = tensor_of(ex['f'], r.out_ref, x); b = tensor_of(ex['q'], dq, x)
    want = [10*np.log10((a[c == j].astype(np.float64)**2).sum()/((a[c == j].astype(np.float64) - b[c == j])**2).sum()) for j in range(2)]
    t = localise_onnx(ex['f'], ex['q'], x, c, ex['ds'].groups, progress=False).set_index(['layer', 'group'])
    np.testing.assert_allclose(t.loc['/layer3/layer3.0/conv1/Conv'].sqnr_db.to_numpy(), want, atol=0.02)


def tensor_of(model, name, x):
    "The tensor `name` of `model` for images `x` (one exposed output)"
    return session(probe_model(model, [name])).run([name], {'input': np.ascontiguousarray(x)})[0]
