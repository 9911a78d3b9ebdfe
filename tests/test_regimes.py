"""The synthetic dataset's positive control works: with `group_features='distinct'` (the dark group's class is a tint of
the lesion, its shape that of a random class) the per-group importance maps of a small trained model disagree more
between light and dark than with `'shared'` (both groups classified by the lesion's shape).

Model: a ViT-like patch MLP (8×8 patch embedding and a per-token layer, each with a per-token LayerNorm, then an MLP
over the 16 tokens), trained from scratch on one thread in about 10 s per regime. Importance: `group_importance`
(GRAPE) on group-balanced val batches from `calibration_batches` (all of the smaller group's val images, as many of
the other's), each weight map summed to one score per output channel; disagreement: the Spearman rank correlation
between the light and dark channel scores of a layer.

Measured while writing this test (`FQ_REGIME_SEEDS=0,...,7`; the same seed for data and model), rho shared - rho
distinct, GRAPE, per layer:
- `combine` (Linear 1024 → 128, the first layer that sees all tokens): +0.15 to +0.58, mean +0.37, positive on all 8;
- `token` (per-token 1×1, 64 channels): -0.21 to +0.20; `embed` (the 8×8 patch embedding, 64): -0.34 to +0.35.
  In the per-token layers light and dark rank channels differently in *both* regimes (rho 0.0-0.5: the groups'
  images differ in brightness, contrast and the dark group's reddish cue by design), so the regime does not move them;
- the mean over layers with >= 8 channels is therefore not reliable (-0.13 to +0.38). The test asserts on `combine`.
On the grid's model (`vit_mini` with 8-pixel patches, n=6000, 15 epochs, seeds 0-2) the mean over all layers with
>= 8 channels gave margins +0.08 to +0.13 (GRAPE, train-split calibration), positive on every seed.
"""
import os
from collections import OrderedDict
import numpy as np, pytest, torch, torch.nn as nn, torch.nn.functional as F
from scipy.stats import spearmanr
from fairquant.datasets import get_dataset
from fairquant.importance import group_importance, calibration_batches

SEEDS = [int(s) for s in os.environ.get('FQ_REGIME_SEEDS', '0').split(',')]   # development: FQ_REGIME_SEEDS=0,1,2,...
DATA = dict(n=4000, minority=0.5, split_fractions=(0.6, 0.4, 0))   # balanced groups: 2400 train, 1600 val images
EPOCHS, WIDTH = 30, 64

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

class TokenNorm(nn.Module):
    "LayerNorm over the channels of every token (B, C, H, W): a ViT's normalisation, blind to a token's brightness"
    def __init__(self, c): super().__init__(); self.ln = nn.LayerNorm(c)
    def forward(self, x): return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

class Standardise(nn.Module):
    def forward(self, x): return (x - 0.5)/0.25

def patch_mlp(w:int=WIDTH, n_classes:int=5)->nn.Module:
    "8×8 patch embedding → token norm → GELU → per-token 1×1 layer → token norm → GELU → MLP over the 4×4 tokens"
    return nn.Sequential(OrderedDict(std=Standardise(), embed=nn.Conv2d(3, w, 8, stride=8), norm1=TokenNorm(w), act1=nn.GELU(),
                                     token=nn.Conv2d(w, w, 1), norm2=TokenNorm(w), act2=nn.GELU(), flat=nn.Flatten(),
                                     combine=nn.Linear(16*w, 2*w), act3=nn.GELU(), head=nn.Linear(2*w, n_classes)))

def split_tensors(ds, split:str)->tuple:
    items = ds.torch_dataset(split)
    x, y, g = zip(*(items[i] for i in range(len(items))))
    return torch.stack(x), torch.tensor(y), torch.tensor(g)

def train(ds, seed:int)->tuple:
    "The model after EPOCHS of AdamW with a one-cycle schedule on the train split, and its val accuracy per group"
    x, y, _ = split_tensors(ds, 'train')
    torch.manual_seed(seed); m = patch_mlp()
    opt = torch.optim.AdamW(m.parameters(), 3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=EPOCHS*((len(x) + 63)//64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        m.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad(); F.cross_entropy(m(x[idx]), y[idx]).backward(); opt.step(); sched.step()
    m.eval()
    xv, yv, gv = split_tensors(ds, 'val')
    with torch.no_grad(): hit = m(xv).argmax(1) == yv
    return m, [hit[gv == k].float().mean().item() for k in range(len(ds.groups))]

def light_dark_rho(imp:dict)->dict:
    "{layer: Spearman correlation of the light and dark per-output-channel scores}"
    return {n.removesuffix('.weight'): float(spearmanr(*t.flatten(2).sum(2).double().numpy()).statistic) for n, t in imp.items()}

def regime_rho(tmp_path, regime:str, seed:int)->tuple:
    "({layer: light-dark rho}, val accuracy per group) of a model trained on one regime"
    ds = get_dataset('synthetic', tmp_path/f'{regime}-{seed}', seed=seed, group_features=regime, **DATA)
    m, acc = train(ds, seed)
    k = ds.split('val').group.value_counts().min()   # the smaller group's val images: about 790 of 1600
    batches, rows = calibration_batches(ds, 'val', None, n_batches=2*k//64, batch_size=64, balance=True, seed=seed)
    assert rows.group.value_counts().nunique() == 1   # group-balanced
    return light_dark_rho(group_importance(m, batches, 'grape', n_groups=2)), acc

@pytest.mark.parametrize('seed', SEEDS)
def test_distinct_regime_importance_disagrees_more(tmp_path, seed):
    (shared, acc_s), (distinct, acc_d) = regime_rho(tmp_path, 'shared', seed), regime_rho(tmp_path, 'distinct', seed)
    print(f"\nseed {seed}: light-dark rho shared / distinct: " + ', '.join(f"{n} {shared[n]:.2f} / {distinct[n]:.2f}" for n in shared)
          + f"; val acc light/dark: shared {acc_s[0]:.2f}/{acc_s[1]:.2f}, distinct {acc_d[0]:.2f}/{acc_d[1]:.2f}")
    assert min(acc_s + acc_d) > 0.3, (acc_s, acc_d)   # every group learned in both regimes (chance 0.2; measured 0.39-0.80)
    # the layer that combines the tokens, where each group's class evidence is read out (128 channels). Measured margin
    # over seeds 0-7: 0.15 to 0.58 (mean 0.37); asserted: 0.1, below the smallest seen
    assert shared['combine'] - distinct['combine'] > 0.1, (shared, distinct)
