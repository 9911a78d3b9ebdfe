"The file contract of stage 40_onnx_int8 that 50_validation relies on: models.json rows and ONNX metadata"
import json

import numpy as np
import pytest
import torch

from fairquant.finetune import build_model, model_spec, save_checkpoint, data_config
from fairquant.onnx_int8 import (CalibReader, convert_checkpoint, write_models_index, read_onnx_meta, onnx_session,
                                 run_onnx, ONNX_FORMAT, META_KEYS)

CLASSES, GROUPS = ['a', 'b', 'c'], ['g0', 'g1']
ROW_KEYS = {'run', 'tag', 'precision', 'file', 'baseline', 'source_checkpoint', 'size_bytes', 'options'}


@pytest.fixture(scope='module')
def stage(tmp_path_factory):
    d, cwd = tmp_path_factory.mktemp('run'), tmp_path_factory.mktemp('cwd')
    import os; old = os.getcwd(); os.chdir(cwd)   # Swin's shape inference fails once: onnxruntime would drop files here
    torch.manual_seed(0)
    m = build_model(model_spec('swin_mini', 32), CLASSES, None, {'crop_pct': 1.0})
    w, _ = save_checkpoint(m, d/'10_finetune_vit_swin'/'swin_mini'/'swin_mini_x', CLASSES, GROUPS)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calib = CalibReader([np.random.default_rng(i).standard_normal((4, 3, 32, 32)).astype(np.float32) for i in range(2)])
    out = d/'40_onnx_int8'
    rows = convert_checkpoint(w, out, x, calib, True, 'swin_mini', '10_finetune_vit_swin/swin_mini/swin_mini_x.safetensors')
    write_models_index(out, rows)
    os.chdir(old)
    assert sorted(p.name for p in cwd.iterdir()) == [], 'quantizing left files in the working directory'
    return out, m, x


def test_models_json_rows(stage):
    out, _, _ = stage
    idx = json.loads((out/'models.json').read_text())['models']
    assert [r['run'] for r in idx] == ['swin_mini-fp32', 'swin_mini-int8-static', 'swin_mini-int8-dynamic']
    for r in idx:
        assert set(r) == ROW_KEYS
        assert r['file'] == f"swin_mini/{r['run']}.onnx" and (out/r['file']).stat().st_size == r['size_bytes']
        assert r['baseline'] == (None if r['precision'] == 'fp32' else 'swin_mini-fp32')
    assert [r['precision'] for r in idx] == ['fp32', 'int8-static', 'int8-dynamic']


def test_metadata_and_io_names(stage):
    out, m, x = stage
    for prec in ['fp32', 'int8-static', 'int8-dynamic']:
        f = out/'swin_mini'/f'swin_mini-{prec}.onnx'
        meta = read_onnx_meta(f, classes=CLASSES, groups=GROUPS)
        assert meta['fairquant_format'] == ONNX_FORMAT and meta['precision'] == prec
        assert (meta['input_name'], meta['output_name']) == ('input', 'logits')
        assert meta['data_config'] == data_config(m) and (meta['quantization'] == {}) == (prec == 'fp32')
        import onnx
        props = {p.key: p.value for p in onnx.load(str(f)).metadata_props}
        assert set(META_KEYS) <= set(props) and all(isinstance(v, str) for v in props.values())
        y = run_onnx(onnx_session(f, threads=1), x.numpy())
        assert y.shape == (6, 3)     # any batch size, three classes


def test_rewrite_replaces_rows(stage):
    out, _, _ = stage
    rows = json.loads((out/'models.json').read_text())['models']
    write_models_index(out, [dict(rows[0], size_bytes=1)])
    idx = json.loads((out/'models.json').read_text())['models']
    assert len(idx) == 3 and sum(r['size_bytes'] == 1 for r in idx) == 1
    write_models_index(out, rows)
