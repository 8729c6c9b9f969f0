"""The six built-in metrics, written in the formula language.

Semantics follow the definitions the published parameters were searched with
(region sums masked by the valid mask ``M``; boundary statistics unmasked; see
docs/loss.md, "Metrics as formulas"). ``tol`` and ``drop_bg`` are the compile options.
"""

__all__ = ['BUILTIN_FORMULAS']

BUILTIN_FORMULAS = {
    # mean over classes of |P and G| / |P or G|
    'mIoU': 'mean_c(sum(M * (P & G)) / sum(M * (P | G)))',
    # IoU weighted by each class's share of the ground-truth pixels
    'FWIoU': 'total(sum(G) / total(sum(G)) * (sum(M * (P & G)) / sum(M * (P | G))))',
    # mean over classes of the per-class recall
    'mAcc': 'mean_c(sum(M * (P & G)) / sum(G))',
    # global pixel accuracy
    'gAcc': 'total(sum(M * (P & G))) / total(sum(G))',
    # mIoU restricted to the band within tol pixels of a ground-truth boundary
    'BIoU': ('band = max_c(dilate(boundary(G), tol), skip_bg=drop_bg);\n'
             'mean_c(sum(M * band * (P & G)) / sum(M * band * (P | G)))'),
    # boundary F1: boundary precision/recall with tolerance tol, matching kept plain
    'BF1': ('bp = boundary(P);\n'
            'bg = boundary(G);\n'
            'pr = div0(sum(plain(bp & dilate(bg, tol))), sum(bp));\n'
            're = div0(sum(plain(dilate(bp, tol) & bg)), sum(bg));\n'
            'mean_c(div0(2 * pr * re, pr + re), where=sum(bg) > 0, skip_bg=drop_bg)'),
}
