"Mixed-precision runs of stage 30 exported to one ONNX file (fairquant.mixed_onnx, called by stage 40): equal predictions, stored integers read back, refusals"
import copy, json

import numpy as np
import onnx
import pytest
import torch
from fastcore import test as fct   # fct.test_eq: a module-level `test_eq` would be collected by pytest as a test

from fairquant.core import load_json
from fairquant.datasets import open_stage_dataset, build_transform
from fairquant.finetune import example_run, load_checkpoint, build_model, model_spec, data_config
from fairquant.mixed_precision import (quantize_model, quant_layers, weight_shape, unit_shape, model_bits, StageSettings,
                                       run_config, update_runs, example_importance, stage_checkpoints, FLOAT_BITS)
from fairquant.mixed_onnx import (export_mixed, read_mixed_weights, layer_integers, channel_bits, bits_sha256, mixed_runs,
                                  convert_mixed_run, mixed_size_report, model_avg_bits, check_bit_assignment)
from fairquant.onnx_int8 import (load_session, read_onnx_meta, run_onnx, onnx_session, split_images, write_models_index, export_onnx,
                                 CalibReader)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "The embedded default's example run (00 + 10 stages)"
    return example_run(tmp_path_factory.mktemp('mixed')/'run')


def _random_bits(model, gran, choices, seed):
    g, ch = torch.Generator().manual_seed(seed), torch.tensor(choices, dtype=torch.int8)
    return {k: ch[torch.randint(0, len(ch), unit_shape(weight_shape(m), gran), generator=g)] for k, m in quant_layers(model).items()}


@pytest.mark.parametrize('arch', ['test_resnet', 'vit_mini'])
@pytest.mark.parametrize('gran,choices', [('per_tensor', (0, 2, 4, 8)), ('per_channel', (0, 2, 3, 4, 8))])
def test_export_equals_fake_quant(run, tmp_path, arch, gran, choices):
    "CNN (timm's test_resnet, with BatchNorm) and ViT, per_tensor and per_channel, with 2-bit and pruned units: same logits, integers, scales"
    ds = open_stage_dataset(run)
    torch.manual_seed(0)
    m = build_model(model_spec(arch, 32), ds.classes, None, {'crop_pct': 1.0})
    dc = data_config(m)
    bits = _random_bits(m, gran, choices, 7)
    if gran == 'per_tensor': bits[next(iter(bits))][:] = 0            # a whole pruned layer
    quantize_model(m, bits, gran)
    f = tmp_path/'m.onnx'
    info = export_mixed(m, f, ds.classes, ds.groups, dc, gran, config='test')
    x = torch.from_numpy(split_images(ds, 'test', dc, 40))
    with torch.no_grad(): ref = m.eval()(x).numpy()
    got = run_onnx(load_session(f, 1), x.numpy())
    fct.test_close(got, ref, eps=1e-4)
    fct.test_eq((got.argmax(1) == ref.argmax(1)).mean(), 1.0)
    lat = {k: q.parametrizations.weight.original for k, q in quant_layers(m).items()}
    back = read_mixed_weights(f)
    fct.test_eq(sorted(back), sorted(k.removesuffix('.weight') for k in bits))
    for k, (q, s) in back.items():
        cb = channel_bits(bits[k + '.weight'], gran, lat[k + '.weight'].shape)
        q0, s0 = layer_integers(lat[k + '.weight'], cb)
        kept = (cb > 0).numpy()
        fct.test_eq(q, q0.numpy()); fct.test_eq(s[kept], s0.numpy()[kept]); fct.test_eq(np.isnan(s), ~kept)   # pruned channels store no scale
        fct.test_eq(int(np.abs(q).max()) <= 127, True)
    meta = read_onnx_meta(f, classes=ds.classes, groups=ds.groups)
    fct.test_eq((meta['precision'], meta['bit_assignment']['sha256'], meta['quantization']['granularity']), ('mixed-weights_only', bits_sha256(bits), gran))
    fct.test_eq(info['theory_bytes']['total'] > 0, True)
    rep = mixed_size_report(f)
    fct.test_eq(rep.loc['total', 'file_bytes'], f.stat().st_size)
    fct.test_eq(rep.loc['weights', 'file/theory'] < (1.6 if 3 in choices else 1.01), True)   # 3-bit stored in INT4: up to 4/3 of theory


def test_fake_quant_integers_match_pytorch():
    "The stored integers times the scales are FakeQuant's weights, for 0..8 and 16 bits"
    from fairquant.mixed_precision import fake_quantize
    w = torch.randn(10, 5, generator=torch.Generator().manual_seed(3))
    b = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 16], dtype=torch.int8)
    q, s = layer_integers(w, b)
    fct.test_close(q.float()*s[:, None], fake_quantize(w, b, 'per_channel').detach(), eps=1e-6)
    fct.test_eq(q.abs().max(1).values.tolist(), [0, 1, 1, 3, 7, 15, 31, 63, 127, 32767])


def test_int16_and_three_bit(run, tmp_path):
    "3-bit weights go to INT4 and 12-bit to INT16 (documented containers); the file still equals the run"
    ds = open_stage_dataset(run)
    ck = load_checkpoint(run/'10_finetune_vit_swin'/'vit_mini'/'vit_mini_synthetic.safetensors')
    m = ck.model
    bits = {k: torch.full((1,), 4, dtype=torch.int8) for k in quant_layers(m)}
    bits['blocks.0.mlp.fc1.weight'][:] = 3; bits['blocks.1.mlp.fc2.weight'][:] = 12
    quantize_model(m, bits, 'per_tensor')
    f = tmp_path/'m.onnx'
    export_mixed(m, f, ds.classes, ds.groups, ck.data_config, 'per_tensor')
    types = {i.name: i.data_type for i in onnx.load(str(f)).graph.initializer}
    fct.test_eq((types['fq/blocks.0.mlp.fc1/int4'], types['fq/blocks.1.mlp.fc2/int16']), (onnx.TensorProto.INT4, onnx.TensorProto.INT16))
    x = torch.from_numpy(split_images(ds, 'test', ck.data_config, 16))
    with torch.no_grad(): ref = m.eval()(x).numpy()
    fct.test_close(run_onnx(load_session(f, 1), x.numpy()), ref, eps=1e-4)
    fct.test_eq(int(np.abs(read_mixed_weights(f)['blocks.0.mlp.fc1'][0]).max()), 3)


def _tiny_cnn(classes):
    torch.manual_seed(0)
    m = build_model(model_spec('test_resnet', 32), classes, None, {'crop_pct': 1.0})
    return m, data_config(m)


def test_refusals(run, tmp_path):
    "per_param bits that vary within a channel, units left at 32 bits, unknown mode: clear errors naming the layer"
    ds = open_stage_dataset(run)
    m, dc = _tiny_cnn(ds.classes)
    b = {k: torch.full(weight_shape(q), 4, dtype=torch.int8) for k, q in quant_layers(m).items()}
    quantize_model(m, b, 'per_param')
    export_mixed(m, tmp_path/'ok.onnx', ds.classes, ds.groups, dc, 'per_param')     # constant per channel: exported per channel
    b['layer2.0.conv1.weight'][3, 0, 0, 0] = 8; quantize_model(m, b, 'per_param')
    fct.test_fail(lambda: export_mixed(m, tmp_path/'pp.onnx', ds.classes, ds.groups, dc, 'per_param'),
                  contains='layer2.0.conv1: per_param bits vary within output channel 3 ([4, 8])')
    m2, _ = _tiny_cnn(ds.classes)
    b2 = {k: torch.full((weight_shape(q)[0],), 2, dtype=torch.int8) for k, q in quant_layers(m2).items()}; b2['conv1.0.weight'][1] = FLOAT_BITS
    quantize_model(m2, b2, 'per_channel')
    fct.test_fail(lambda: export_mixed(m2, tmp_path/'x.onnx', ds.classes, ds.groups, dc, 'per_channel'), contains='conv1.0: units at 32 bits')
    fct.test_fail(lambda: export_mixed(m2, tmp_path/'x.onnx', ds.classes, ds.groups, dc, 'per_channel', 'int4_activations'), contains="mode='int4_activations'")
    fct.test_fail(lambda: channel_bits(torch.tensor([4]), 'per_block', (3, 3), 'fc'), contains="fc: granularity='per_block' cannot be exported")
    fct.test_eq([p.name for p in tmp_path.iterdir()], ['ok.onnx'])


def test_int8_activations_cnn(run, tmp_path):
    "INT8 layers with U8 activations and BatchNorm folded into the scales (integers kept); plain onnxruntime runs the file too"
    ds = open_stage_dataset(run)
    m, dc = _tiny_cnn(ds.classes)
    bits = _random_bits(m, 'per_tensor', (2, 4, 8, 8, 8), 5)
    quantize_model(m, bits, 'per_tensor')
    calib = [split_images(ds, 'val', dc, 16)]
    info = export_mixed(m, tmp_path/'a8.onnx', ds.classes, ds.groups, dc, 'per_tensor', 'int8_activations', CalibReader(calib))
    n8 = sorted(k.removesuffix('.weight') for k, b in bits.items() if set(b.tolist()) == {8})
    fct.test_eq(sorted(info['int8_activation_layers']), n8)
    fct.test_eq(len(info['bn_folded']), 15)                          # every conv of test_resnet is followed by a BatchNorm
    g = onnx.load(str(tmp_path/'a8.onnx')).graph
    fct.test_eq(sum(n.op_type == 'BatchNormalization' for n in g.node), 0)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    q8 = [v for k, v in inits.items() if k.endswith('_quantized') and v.ndim == 4]
    fct.test_eq(len(q8), len(n8) - ('fc' in n8))
    fct.test_eq(all((np.abs(v.reshape(len(v), -1)).max(1) == 127).all() for v in q8), True)   # 8-bit integers: every channel reaches ±qmax
    x = split_images(ds, 'test', dc, 40)
    with torch.no_grad(): ref = m.eval()(torch.from_numpy(x)).numpy()
    got = run_onnx(load_session(tmp_path/'a8.onnx', 1), x)
    fct.test_eq((got.argmax(1) == ref.argmax(1)).mean() >= 0.9, True)
    fct.test_eq(float(np.abs(run_onnx(onnx_session(tmp_path/'a8.onnx', 1), x) - got).max()) < 0.01, True)
    # its bit summary agrees with what it stores: containers for the sub-8-bit layers, onnxruntime's QDQ for the INT8 ones
    check_bit_assignment(tmp_path/'a8.onnx')
    fct.test_eq(sorted(read_mixed_weights(tmp_path/'a8.onnx')), sorted(set(k.removesuffix('.weight') for k in bits) - set(n8)))


def test_load_session_plain_files(run, tmp_path):
    "load_session opens an FP32 file exactly as onnx_session does"
    ds = open_stage_dataset(run)
    ck = load_checkpoint(run/'10_finetune_vit_swin'/'vit_mini'/'vit_mini_synthetic.safetensors')
    f = export_onnx(ck.model, tmp_path/'fp32.onnx', ds.classes, ds.groups, ck.data_config)
    x = split_images(ds, 'val', ck.data_config, 8)
    fct.test_eq(run_onnx(load_session(f, 1), x), run_onnx(onnx_session(f, 1), x))


def test_fq_qat_run_exported(run):
    "A real fq_qat run (stage 20 + 30, QAT-trained 2/4/8 bits): the exported file agrees on >= 99.5 % of the test images"
    example_importance(run, n_batches=1)
    s = StageSettings(epochs=1, n_train=160, n_val=32, granularity='per_channel')
    for row in stage_checkpoints(run): update_runs(run, run_config(run, row, 'fq_qat', s, progress=False))
    fct.test_fail(lambda: mixed_runs(run, ['fq_qat', 'hawq']), contains="mixed_configs ['hawq']: not in")
    runs = mixed_runs(run, ['fq_qat'])
    ds, out = open_stage_dataset(run), run/'40_onnx_int8'
    rows = [convert_mixed_run(run, r, out, 'weights_only', ds=ds, n_check=16) for r in runs]
    write_models_index(out, rows)
    res = {}
    for r, row in zip(runs, rows):
        # fq_qat trains: its matched reference (stage 30's summary.json) is FP32 retrained the same way, not the checkpoint
        fct.test_eq(load_json(run/'30_mixed_precision'/r['folder']/'summary.json')['reference'], 'fp32_ft')
        fct.test_eq((row['run'], row['precision'], row['baseline']), (f"{r['tag']}-fq_qat-onnx", 'mixed-weights_only', f"{r['tag']}-fp32_ft"))
        fct.test_eq(row['file'], f"{r['tag']}/{r['tag']}-fq_qat-onnx.onnx")
        s30 = load_json(run/'30_mixed_precision'/r['folder']/'summary.json')
        fct.test_close(row['avg_bits'], s30['avg_bits'], eps=1e-9)      # the run's bits, as stage 30 reported them
        from fairquant.mixed_precision import load_quantized_checkpoint
        model, meta = load_quantized_checkpoint(run/row['source_checkpoint'])
        fct.test_eq(model_avg_bits(model), row['avg_bits'])
        fct.test_eq(sorted(set(torch.cat([b.reshape(-1) for b in meta['bits'].values()]).tolist())), [2, 4, 8])
        x = split_images(ds, 'test', meta['data_config'])
        with torch.no_grad(): ref = model(torch.from_numpy(x)).numpy()
        got = run_onnx(load_session(out/row['file'], 2), x)
        res[r['tag']] = float((got.argmax(1) == ref.argmax(1)).mean())
        fct.test_eq(res[r['tag']] >= 0.995, True)
        rep = mixed_size_report(out/row['file'])
        fct.test_eq(rep.loc['total', 'file_bytes'], row['size_bytes'])
        print(r['tag'], 'top-1 agreement', res[r['tag']], 'on', len(x), 'test images; avg bits', round(row['avg_bits'], 3),
              'file/theory', round(row['size_bytes']/row['theory_bytes'], 4))
    fct.test_eq([r['run'] for r in load_json(out/'models.json')['models']], [r['run'] for r in rows])
