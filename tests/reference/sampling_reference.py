"""A numpy reference of Tessera's token sampler (kernels/sampler.h), written from its definition, not its code.

float32 steps are done with float32 numpy arrays (each numpy operation is one IEEE float32 operation, never
fused), so the processed logits and the Exp32 weights are bit-identical to the C++ ones; sums are float64.
The kept sets and the draw are computed the plain way (sorting, cumulative sums), as a check on the C++
threshold searches.
"""

import numpy as np

F32 = np.float32
GREEDY_BELOW_TEMPERATURE = F32(1e-5)
MAX_TOP_LOGPROBS = 20
MASK64 = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def sample_uniform(seed, step):
    """The uniform in [0, 1) for (seed, step)."""
    h = splitmix64(splitmix64(seed) ^ splitmix64(step ^ 0x5851F42D4C957F2D))
    return float(h >> 11) * 2.0**-53


def exp32(x):
    """Exp32 of a float32 array, operation by operation as sampler.h defines it."""
    x = np.asarray(x, dtype=F32)
    ok = x >= F32(-80.0)  # False for NaN too
    xs = np.where(ok, x, F32(0.0)).astype(F32)
    n = np.rint(xs * F32(1.44269504088896341))
    r = xs - n * F32(0.693359375)
    r = r - n * F32(-2.12194440e-4)
    y = np.full_like(r, F32(1.9875691500e-4))
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        y = y * r + F32(c)
    y = y * (r * r) + r
    y = y + F32(1.0)
    pow2 = np.ldexp(np.ones_like(y), n.astype(np.int32)).astype(F32)
    out = (y * pow2).astype(F32)
    return np.where(ok, out, F32(0.0)).astype(F32)


def process_logits(logits, params):
    """Step 1: banned ids, logit bias, repetition / frequency / presence penalties (float32)."""
    l = np.array(logits, dtype=F32, copy=True)
    vocab = l.size

    def ok(i):
        return 0 <= i < vocab

    for i in params.get("banned", []):
        if ok(i):
            l[i] = F32(-np.inf)
    for i, b in params.get("bias", []):
        if ok(i):
            l[i] = l[i] + F32(b)
    tokens = list(params.get("tokens", []))
    if not tokens:
        return l
    num_prompt = min(max(params.get("num_prompt", 0), 0), len(tokens))
    p = F32(params.get("repetition", 1.0))
    if p > 0 and p != 1:
        for i in sorted(set(tokens)):
            if ok(i):
                l[i] = l[i] / p if l[i] > 0 else l[i] * p
    pres, freq = F32(params.get("presence", 0.0)), F32(params.get("frequency", 0.0))
    if pres != 0 or freq != 0:
        gen = tokens[num_prompt:]
        for i in sorted(set(gen)):
            if ok(i):
                c = F32(gen.count(i))
                l[i] = F32(l[i] - freq * c)
                l[i] = F32(l[i] - pres)
    return l


def first_argmax(l):
    with np.errstate(invalid="ignore"):
        m = np.nanmax(l) if not np.all(np.isnan(l)) else np.nan
    if np.isnan(m):
        return 0
    return int(np.flatnonzero(l == m)[0])


def upper_set_threshold(w, eligible, need):
    """Largest value v among eligible w with sum(w[eligible & (w >= v)]) >= need (sorting)."""
    vals = np.sort(w[eligible].astype(np.float64))[::-1]
    uniq, first = np.unique(-vals, return_index=True)  # distinct values, descending
    cum = np.cumsum(vals)
    for k, start in enumerate(first):
        end = first[k + 1] if k + 1 < len(first) else len(vals)
        if cum[end - 1] >= need:
            return F32(-uniq[k])
    return F32(vals[-1])


def kept_threshold(w, params):
    """Step 3: the threshold weight of the kept set K = {w >= theta}."""
    vocab = w.size
    theta = F32(0.0)
    min_p = F32(params.get("min_p", 0.0))
    if min_p > 0:
        theta = min(min_p, F32(1.0))
    top_k = params.get("top_k", 0)
    if 0 < top_k < vocab:
        s1 = np.sort(w[w >= theta])[::-1]
        if top_k < s1.size:
            theta = F32(s1[top_k - 1])
    top_p = F32(params.get("top_p", 1.0))
    if top_p < 1:
        eligible = w >= theta
        need = float(top_p) * float(np.sum(w[eligible], dtype=np.float64))
        theta = upper_set_threshold(w, eligible, need) if need > 0 else F32(1.0)
    return theta


def sample(logits, params, seed, step):
    """The token SampleRow chooses, and (for checks) the kept threshold (None when greedy)."""
    l = process_logits(logits, params)
    t = F32(params.get("temperature", 0.0))
    finite = l[~np.isnan(l)]
    m = finite.max() if finite.size else F32(-np.inf)
    if not (t >= GREEDY_BELOW_TEMPERATURE) or not (m > -np.inf) or m == np.inf:
        return first_argmax(l), None
    inv_t = F32(F32(1.0) / t)
    w = exp32((l - m) * inv_t)
    theta = kept_threshold(w, params)
    kept = (w >= theta) & (w > 0)
    ids = np.flatnonzero(kept)
    cum = np.cumsum(w[ids].astype(np.float64))
    x = sample_uniform(seed, step) * cum[-1]
    j = int(np.searchsorted(cum, x, side="right"))
    return int(ids[min(j, len(ids) - 1)]), theta


def token_logprobs(logits, token, top_n):
    """Raw logprobs (exact float64 log_softmax): (logprob, rank, [(id, logprob)] most likely first)."""
    l = np.asarray(logits, dtype=F32)
    l64 = l.astype(np.float64)
    m = l64.max()
    lse = m + np.log(np.sum(np.exp(l64 - m)))
    rank = int(np.sum(l >= l[token]))
    n = min(max(top_n, 0), MAX_TOP_LOGPROBS)
    order = np.lexsort((np.arange(l.size), -l64))[:n]  # logit descending, ties to the lower id
    return l64[token] - lse, max(rank, 1), [(int(i), l64[i] - lse) for i in order]
