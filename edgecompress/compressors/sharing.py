"""Weight sharing: per-layer k-means codebooks (Deep Compression, Han et al. 2016).

The surviving (non-pruned) weights of a layer are clustered into ``clusters``
centroids by 1-D k-means with linear initialisation (centroids evenly spaced
between the smallest and largest weight, the initialisation Han et al. found
best). Each weight is then tied to its centroid; during fine-tuning the
centroids train and the assignments stay fixed. Storage is counted as a
codebook plus log2(clusters)-bit indices, and Huffman-coded (see ``report``).
When ``clusters`` is set, ``wbits`` does not apply to that layer's weights.
"""

from __future__ import annotations

import torch

import edgecompress.compressors.constraints as constraints
from edgecompress.compressors.base import (
    CompressionContext,
    Knob,
    layers_asking,
    register_knob,
    register_technique,
    weight_modules,
)


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm in one dimension with linear initialisation; returns (centroids, assignment).

    In 1-D each cluster is a contiguous run of the sorted values, split at the
    midpoints between neighbouring centroids; with prefix sums one iteration
    costs O(k log N), so clustering a large layer takes milliseconds.
    """
    flat = values.detach().flatten().to(torch.float64)
    k = max(1, min(k, flat.numel()))
    ordered, _ = torch.sort(flat)
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(ordered, 0)])
    centroids = torch.linspace(float(ordered[0]), float(ordered[-1]), k, dtype=torch.float64)
    cuts = None
    for _ in range(iters):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        # Run i of the sorted values is [edges[i], edges[i+1]); ties at a midpoint go to the upper cluster.
        new_cuts = torch.searchsorted(ordered, bounds, right=False)
        if cuts is not None and torch.equal(new_cuts, cuts):
            break
        cuts = new_cuts
        edges = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([ordered.numel()])])
        counts = (edges[1:] - edges[:-1]).to(torch.float64)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        # Empty clusters keep their centroid (linear init leaves some in gaps of the distribution).
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    bounds = (centroids[1:] + centroids[:-1]) / 2
    assign = torch.searchsorted(bounds, flat, right=True)
    return centroids.to(torch.float32), assign


CLUSTERS = register_knob(
    Knob("clusters", "sharing", "choice", choices=(0, 4, 8, 16, 32, 64, 256), help="k-means codebook size (0 = off)")
)


@register_technique
class WeightSharing:
    name = "sharing"

    def apply(self, ctx: CompressionContext) -> None:
        for name in layers_asking(ctx, lambda lp: lp.clusters > 0):
            lp = ctx.policy.get(name)
            used = 0
            for _, m in weight_modules(ctx.model, name):
                w = constraints.effective_weight(m)
                keep = w != 0
                if not bool(keep.any()):
                    ctx.skip(name, self.name, "every weight is pruned; nothing to cluster")
                    continue
                centroids, assign = kmeans_1d(w[keep], lp.clusters)
                index = torch.zeros(w.shape, dtype=torch.int64)
                index[keep] = assign
                constraints.register(m, constraints.SharedWeights(centroids, index, keep))
                used = max(used, int(centroids.numel()))
            if lp.wbits != 32:
                ctx.skip(name, "quantization", "weights are shared (codebook + indices); wbits does not apply")
            if 0 < used < lp.clusters:
                ctx.warnings.append(f"sharing: {name} has fewer surviving weights than {lp.clusters} clusters")
            ctx.record(name, self.name, clusters=lp.clusters, used=used)
