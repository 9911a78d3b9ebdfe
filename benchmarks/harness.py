"""The timing harness every benchmark shares: a method and its baseline run interleaved, round by round, and each
result is reported as its median with the spread beside it (`ratio`, `ratio_min`, `ratio_max`).

On a shared 2-core machine one run cannot tell a regression from noise; a ratio taken within one round (both sides
timed back to back) cancels most of the machine's drift, and the min/max over the rounds say how far a single run
could have landed. Targets are judged on the median.

The order within a round is rotated by one from round to round: over n rounds every function runs in every position
once, and with three or more functions none runs twice in a row across a round boundary. The order used to be
reversed every other round, which ran the first and the last function twice back to back, on warm caches: an A/A
pair in `mixed_onnx.py` (two sessions of one FP32 file, the first at an end of the order, the other inside) measured
0.90 (min 0.55) instead of 1 in both of two runs, a bias of every ratio against the first function. For two
functions the rotation is that reversal, and both get the same advantage."""
import statistics, time

ROUNDS = 5   # the minimum: at least 5 interleaved rounds per pair


def round_order(names:list, i:int)->list:
    "The order of round `i`: `names` rotated left by i (warm-up rounds have negative i)"
    j = i % len(names)
    return list(names[j:]) + list(names[:j])


def interleaved(fns:dict, rounds:int=ROUNDS, warmup:int=1, repeat:int=1)->dict:
    """{name: [seconds per round]}: every function once per round (the best of `repeat` calls), the order rotated
    by one each round (`round_order`); `warmup` untimed rounds first"""
    if rounds < 1: raise ValueError(f"rounds={rounds}: expected at least 1")
    names = list(fns); out = {k: [] for k in names}
    for i in range(warmup + rounds):
        for k in round_order(names, i - warmup):
            best = float('inf')
            for _ in range(repeat):
                t = time.perf_counter(); fns[k](); best = min(best, time.perf_counter() - t)
            if i >= warmup: out[k].append(best)
    return out


def round_ratios(times:dict, num:str, den:str)->list:
    "Per-round ratio times[num][i] / times[den][i] (both timed in the same round)"
    a, b = times[num], times[den]
    if len(a) != len(b) or not a: raise ValueError(f"round_ratios: {num} has {len(a)} rounds, {den} {len(b)}")
    return [x/y for x, y in zip(a, b)]


def spread(key:str, values, digits:int=4)->dict:
    "{key: median, key_min: min, key_max: max} of `values`, rounded"
    v = [float(x) for x in values]
    if not v: raise ValueError(f"spread({key!r}): no values")
    return {key: round(statistics.median(v), digits), f'{key}_min': round(min(v), digits), f'{key}_max': round(max(v), digits)}
