"Stage 45_fair_int8: localisation finds a broken layer and a group-targeted fault, the fallback's claims hold on its own CSV and its saved file, ε below the resolution warns, the calibration check flags a missing group and a true 2 % clip rate out of sample, and the stage driver end to end"
import copy, json, warnings

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import numpy_helper

from fairquant.core import require_stage
from fairquant.datasets import open_stage_dataset
from fairquant.onnx_int8 import load_onnx, read_onnx_meta, calibration_mix
from fairquant.core import load_json, read_csv
from fairquant.fair_int8 import (example_int8_run, val_subset, quantized_layers, localise_onnx, layer_ranking, keep_float,
                                 fallback_search, logits, clipped_shares, calibration_check, CalibrationWarning, int8_fair,
                                 _producers, _consumers, own_error_model, optimized_ops, probe_model, dequantize, session,
                                 example_group_net, plant_group_fault, group_drop, ResolutionWarning, check_calibration, held_out,
                                 run_fair_int8, rerun_from_file, save_variant)

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
    with pytest.warns(ResolutionWarning, match="below one image of the smallest group \\('dark': 11 images"):
        steps, res = fallback_search(b, ex['f'], tb, ex['x'], ex['y'], ex['c'], ex['ds'].groups, eps, progress=False)
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


def test_own_error_model_runs_integer_kernels_where_the_int8_model_does(ex):
    "The layer-alone model: requantized branches fuse into QLinearConv/QGemm, the others are float Convs on stored float weights"
    L = quantized_layers(ex['q'], ex['f'])
    assert len(L) == 21 and L.out_requant.sum() == 13
    ops = optimized_ops(own_error_model(ex['q'], ex['f'], L)['model'])
    assert (ops.get('QLinearConv', 0), ops.get('QGemm', 0)) == (12, 1), ops
    assert ops.get('Conv', 0) + ops.get('FusedConv', 0) == 20 + 8, ops


def test_folded_weights_are_onnxruntimes_dequantizelinear(ex):
    "Every weight a float branch stores, dequantized here, equals, bit for bit, the graph's own DequantizeLinear run by onnxruntime"
    L = quantized_layers(ex['q'], ex['f'])
    prod = _producers(ex['q'].graph)
    dq = {r.layer: prod[[n for n in ex['q'].graph.node if n.name == r.int8_node][0].input[1]] for r in L.itertuples() if not r.out_requant}
    assert len(dq) == 8
    m = probe_model(ex['q'], [d.output[0] for d in dq.values()])
    got = dict(zip([o.name for o in session(m).get_outputs()], session(m).run(None, {'input': np.ascontiguousarray(ex['x'][:2])})))
    inits = {i.name: numpy_helper.to_array(i) for i in ex['q'].graph.initializer}
    for d in dq.values():
        np.testing.assert_array_equal(dequantize(inits[d.input[0]], inits[d.input[1]], inits[d.input[2]], 0), got[d.output[0]])


def test_layer_alone_equals_the_extracted_int8_layer_fed_fp32_input(ex):
    "Each layer's SQNR equals one recomputed from that layer cut out of the INT8 model (onnx.utils.Extractor, no folding), fed FP32's input"
    from onnx.utils import Extractor
    L = quantized_layers(ex['q'], ex['f']).set_index('layer')
    x, c = ex['x'][:40], ex['c'][:40]
    t = localise_onnx(ex['f'], ex['q'], x, c, ex['ds'].groups, progress=False).set_index(['layer', 'group'])
    cons = _consumers(ex['q'].graph)
    for layer in ['/layer3/layer3.0/conv1/Conv', '/layer3/layer3.0/conv2/Conv', '/fc/Gemm']:   # next conv requantizes / its own (Add) / logits
        r = L.loc[layer]
        out = [d for d in cons[r.out_q] if d.op_type == 'DequantizeLinear'][0].output[0] if r.out_requant else r.out_int8
        sub = Extractor(onnx.shape_inference.infer_shapes(ex['q'])).extract_model([r.in_int8], [out])
        a, xin = tensor_of(ex['f'], r.out_ref, x), tensor_of(ex['f'], r.in_fp32, x) if r.in_fp32 != 'input' else x
        b = session(sub).run([out], {r.in_int8: np.ascontiguousarray(xin)})[0]
        if not r.out_requant and r.out_ref != r.out_fp32: b = np.maximum(b, 0)   # the removed Relu
        want = [10*np.log10((a[c == j].astype(np.float64)**2).sum()/((a[c == j].astype(np.float64) - b[c == j])**2).sum()) for j in range(2)]
        np.testing.assert_allclose(t.loc[layer].sqnr_db.to_numpy(), want, atol=0.02, err_msg=layer)
    assert L.loc['/layer3/layer3.0/conv1/Conv', 'out_requant'] == False and L.loc['/layer3/layer3.0/conv2/Conv', 'out_requant'] == True


def tensor_of(model, name, x):
    "The tensor `name` of `model` for images `x` (one exposed output)"
    return session(probe_model(model, [name])).run([name], {'input': np.ascontiguousarray(x)})[0]


@pytest.fixture(scope='module')
def gnet(tmp_path_factory):
    N = example_group_net(tmp_path_factory.mktemp('gnet'))
    f, q = load_onnx(N['fp32']), load_onnx(N['int8'])
    return dict(N, f=f, q=q, fp=logits(f, N['x']).argmax(1))


def test_group_fault_is_ranked_and_floated_first(gnet):
    "A fault in one layer that drops the minority's feature: that layer is ranked first and is the first (and only) layer the fallback floats"
    N, f, x, c, g = gnet, gnet['f'], gnet['x'], gnet['codes'], gnet['groups']
    b = plant_group_fault(gnet['q'], f, '/2/Conv', x, c, group=1, k=1, factor=0.0)
    d, ok = group_drop(logits(b, x).argmax(1), gnet['fp'], N['y'], c, g), group_drop(gnet['fp'], gnet['fp'], N['y'], c, g)
    assert ok['val_acc[minority]'] - d['val_acc[minority]'] > 0.25 and ok['val_acc[majority]'] - d['val_acc[majority]'] < 0.02   # it hurts one group
    t = localise_onnx(f, b, x, c, g, progress=False)
    assert layer_ranking(t)[0] == '/2/Conv'
    s = t[t.layer == '/2/Conv'].set_index('group').sqnr_db
    assert s['majority'] - s['minority'] > 15
    steps, res = fallback_search(b, f, t, x, N['y'], c, g, 0.0, gnet['fp'], progress=False, n_boot=0)
    assert res['met'] and res['float_layers'] == ['/2/Conv'] and steps.added_layer.iloc[1] == '/2/Conv' and steps.chosen_for.iloc[1] == 'minority'
    # the intact model is not ranked that way: the fault made the rank
    assert layer_ranking(localise_onnx(f, gnet['q'], x, c, g, progress=False))[0] != '/2/Conv'


def test_eps_below_resolution_warns_and_keeps_eps(ex):
    "ε below one image of the smallest group is warned about and recorded, never loosened; ε = 0 and ε ≥ one image are not warned about"
    import warnings
    b = broken(ex['q'], '/layer1/layer1.0/conv1/Conv')
    tb = localise_onnx(ex['f'], b, ex['x'], ex['c'], ex['ds'].groups, progress=False)
    with pytest.warns(ResolutionWarning, match=r"max_worst_group_drop_pp=5 is below one image of the smallest group \('dark': 11 images, 9.09 points each\)"):
        steps, res = fallback_search(b, ex['f'], tb, ex['x'], ex['y'], ex['c'], ex['ds'].groups, 5, progress=False, n_boot=200)
    assert res['eps'] == 5 and res['eps_below_resolution'] and res['smallest_group'] == 'dark' and res['resolution_pp'] == pytest.approx(100/11)
    assert res['worst_group_drop_pp'] <= 5 and (steps.worst_group_drop_pp.iloc[:-1] > 5).all()   # the asked ε, not the resolution, decided
    assert res['drop_interval']['resolution_pp'] == pytest.approx(100/11)
    with warnings.catch_warnings():
        warnings.simplefilter('error', ResolutionWarning)
        for eps in (0.0, 100/11):
            assert not fallback_search(b, ex['f'], tb, ex['x'], ex['y'], ex['c'], ex['ds'].groups, eps, progress=False, n_boot=0)[1]['eps_below_resolution']


def test_rerun_from_file_catches_a_different_model(ex, tmp_path):
    b = broken(ex['q'], '/layer1/layer1.0/conv1/Conv')
    tb = localise_onnx(ex['f'], b, ex['x'], ex['c'], ex['ds'].groups, progress=False)
    steps, res = fallback_search(b, ex['f'], tb, ex['x'], ex['y'], ex['c'], ex['ds'].groups, 0.0, progress=False, n_boot=0)
    src = {p.key: p.value for p in ex['q'].metadata_props}
    p = save_variant(keep_float(b, ex['f'], res['float_layers']), tmp_path/'fair.onnx', src, 'int8-fair', {})
    assert rerun_from_file(p, ex['x'], ex['y'], ex['c'], ex['ds'].groups, ex['y'], steps.iloc[-1].to_dict())['worst_group_drop_pp'] == res['worst_group_drop_pp']
    save_variant(b, tmp_path/'other.onnx', src, 'int8-fair', {})
    with pytest.raises(ValueError, match='the saved model is not the one the search chose'):
        rerun_from_file(tmp_path/'other.onnx', ex['x'], ex['y'], ex['c'], ex['ds'].groups, ex['y'], steps.iloc[-1].to_dict())


def _clip_pair(hi):
    "An FP32 model (input → Relu) and its INT8 twin whose one activation QuantizeLinear clips the input to [0, hi]"
    from onnx import helper
    inp, out = helper.make_tensor_value_info('input', onnx.TensorProto.FLOAT, ['n', 1, 10, 10]), helper.make_tensor_value_info('logits', onnx.TensorProto.FLOAT, None)
    f = helper.make_model(helper.make_graph([helper.make_node('Relu', ['input'], ['logits'])], 'f', [inp], [out]), opset_imports=[helper.make_opsetid('', 17)], ir_version=8)
    nodes = [helper.make_node('QuantizeLinear', ['input', 's', 'z'], ['iq']), helper.make_node('DequantizeLinear', ['iq', 's', 'z'], ['idq']), helper.make_node('Relu', ['idq'], ['logits'])]
    init = [numpy_helper.from_array(np.array(hi/255, np.float32), 's'), numpy_helper.from_array(np.array(0, np.uint8), 'z')]
    return f, helper.make_model(helper.make_graph(nodes, 'q', [inp], [out], init), opset_imports=[helper.make_opsetid('', 17)], ir_version=8)


def test_true_2pct_minority_clipping_is_flagged_out_of_sample():
    "71 % of the minority's val images are calibration images (13 % of the majority's); its other images clip at 2 %: flagged (in-sample it reads 0.59 %)"
    rng, groups = np.random.default_rng(1), ['majority', 'minority']
    codes = np.r_[np.zeros(600, int), np.ones(78, int)]; ids = [f'im{i}' for i in range(len(codes))]
    cal = np.r_[np.arange(78), 600 + np.arange(55)]
    x = rng.uniform(0, 0.9, (len(codes), 1, 10, 10)).astype(np.float32)
    rest = np.setdiff1d(np.arange(len(codes)), cal)
    for i in rest[codes[rest] == 1]: x[i].flat[rng.choice(100, 2, replace=False)] = 1.5
    for i in rest[codes[rest] == 0][::10]: x[i].flat[rng.choice(100, 1)] = 1.5
    f, q = _clip_pair(1.0)
    mix = pd.DataFrame({'calibration': [78, 55], 'c %': [0, 0], 'val': [600, 78], 'val %': [88.5, 11.5]}, index=pd.Index(groups, name='group'))
    t, msgs = check_calibration(f, q, x, codes, ids, groups, mix, np.array(ids)[cal], warn=False)
    t = t.set_index('group')
    assert t.loc['minority', 'clipped_share'] == pytest.approx(0.02) and t.loc['minority', 'flagged']
    assert (t.loc['minority', 'n_images'], t.loc['minority', 'n_left_out']) == (23, 55)
    assert any("group 'minority' is clipped far more" in m for m in msgs)
    t0, _ = check_calibration(f, q, x, codes, ids, groups, mix, [], warn=False)   # all of val, calibration images included
    assert not t0.set_index('group').loc['minority', 'flagged']
    assert held_out(ids[:3], ['im1']).tolist() == [True, False, True]


def test_run_fair_int8_end_to_end(ex):
    "The stage driver: models.json schema, the fair model re-run from its file, its test drop, calibration checked on held-out val images only"
    run = ex['run']
    with pytest.warns(ResolutionWarning):
        s = run_fair_int8(run, tags='resnet18', max_worst_group_drop_pp=1.0, n_val=0, n_boot=50, progress=False)
    out = run/'45_fair_int8'
    assert s['tags'] == ['resnet18'] and s['models'] == ['resnet18-int8-fair', 'resnet18-int8-acc', 'resnet18-int8-random']
    assert load_json(out/'summary.json')['met'] == s['met']
    idx = load_json(out/'models.json')['models']
    assert {r['baseline'] for r in idx} == {'resnet18-onnx-fp32'} and all((out/r['file']).exists() for r in idx)
    # each row records its file's SHA-256 and the checkpoint it descends from (40's); 50 takes them (file unchanged, paired by provenance)
    from fairquant.core import file_sha256
    from fairquant.validation import find_models
    src40 = {r['run']: r for r in load_json(run/'40_onnx_int8'/'models.json')['models']}['resnet18-int8-static']['source_sha256']
    assert all(r['sha256'] == file_sha256(out/r['file']) and r['source_sha256'] == src40 for r in idx) and src40
    assert set(s['models']) <= set(find_models(run).run)
    fb, steps = load_json(out/TAG/'fallback.json'), read_csv(out/TAG/'fallback.csv')
    assert fb['val_from_file']['worst_group_drop_pp'] == pytest.approx(steps.worst_group_drop_pp.iloc[-1], abs=1e-9)
    assert fb['test_drop']['n_worst'] > 0 and fb['n_test'] == len(ex['ds'].split('test')) and fb['eps_below_resolution']
    # calibration: 40's images and the random ones are left out of the clipping measurement and the comparison
    ds = ex['ds']
    val = ds.split('val').assign(g=lambda t: t.group.map(dict(enumerate(ds.groups))), image_id=lambda t: t.image_id.astype(str))
    man = read_csv(run/'40_onnx_int8'/'calibration'/'manifest.csv', dtype={'image_id': str})
    rnd = read_csv(out/TAG/'calibration_random.csv', dtype={'image_id': str})
    ck = read_csv(out/TAG/'calibration_check.csv').drop_duplicates(['model', 'group']).set_index(['model', 'group'])
    for model, ids in ((f'{TAG}-int8-static', man.image_id), (f'{TAG}-int8-random', rnd.image_id)):
        left = val[~val.image_id.isin(ids)].g.value_counts()
        assert {g: ck.loc[(model, g), 'n_images'] for g in ds.groups} == {g: left.get(g, 0) for g in ds.groups}
    neither = val[~val.image_id.isin(set(man.image_id) | set(rnd.image_id))].g.value_counts()
    cmp = read_csv(out/TAG/'calibration_compare.csv')
    assert cmp[cmp.model == 'fp32'].set_index('group').n.to_dict() == {g: neither.get(g, 0) for g in ds.groups}
    assert set(read_csv(out/'summary.csv').variant) == {'fp32', 'int8-static', 'int8-fair', 'int8-acc', 'int8-random'}


def test_worst_group_drop_interval_contains_estimate_and_is_paired(ex):
    "The fallback's worst-group drop (fairquant.metrics): its interval holds the estimate; pairing shows in the draws"
    from fairquant.fair_int8 import paired_drop, group_drop
    b, g = broken(ex['q'], '/layer1/layer1.0/conv1/Conv'), ex['ds'].groups
    fp, p, y, c = logits(ex['f'], ex['x']).argmax(1), logits(b, ex['x']).argmax(1), ex['y'], ex['c']
    d = paired_drop(p, fp, y, c, g, n_boot=1000)
    assert d['worst_group_drop_pp'] == group_drop(p, fp, y, c, g)['worst_group_drop_pp'] > 0
    assert d['worst_group_drop_pp_lo'] <= d['worst_group_drop_pp'] <= d['worst_group_drop_pp_hi']
    assert d['resolution_pp'] == pytest.approx(100/np.bincount(c).min()) and np.bincount(c).min() == 11   # 79 light, 11 dark
    # paired: FP32 right on half of 'dark', the model wrong on 3 of those and right nowhere FP32 is wrong -> no draw shows a gain
    dk = np.flatnonzero(c == 1); ref = y.copy(); ref[dk[6:]] = (y[dk[6:]] + 1) % 5
    pred = ref.copy(); pred[dk[:3]] = (y[dk[:3]] + 1) % 5
    d2 = paired_drop(pred, ref, y, c, g, n_boot=1000)
    assert (d2['worst_group'], d2['discordant_worst']) == ('dark', 3)
    assert d2['worst_group_drop_pp'] == pytest.approx(300/11) and 0 <= d2['worst_group_drop_pp_lo'] < d2['worst_group_drop_pp_hi']
    rng = np.random.default_rng(0)   # drawn independently (unpaired), the same images give intervals reaching below 0
    un = [100*((ref[dk] == y[dk])[rng.integers(0, 11, 11)].mean() - (pred[dk] == y[dk])[rng.integers(0, 11, 11)].mean()) for _ in range(1000)]
    assert np.percentile(un, 2.5) < 0
    same = paired_drop(ref, ref, y, c, g, n_boot=200)
    assert (same['worst_group_drop_pp_lo'], same['worst_group_drop_pp_hi']) == (0.0, 0.0)
