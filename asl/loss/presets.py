"""Published searched parameters (control-point coordinates) of the official configs.

Searched on PASCAL VOC 2012 with an R50-DeepLabV3+ proxy (Li et al., ICLR 2021).
"""

__all__ = ['PAPER_PRESETS', 'paper_preset']

_MIOU = [
    5.69728440e-04, 6.43720450e-01, 3.38589169e-01, 7.05543360e-01, 6.25281252e-01,
    7.79551927e-01, 6.90375570e-01, 1.30628900e-02, 8.34170515e-01, 9.62431815e-01,
    9.42998269e-01, 9.80038125e-01
]
_FWIOU = [
    3.65390355e-04, 9.84171689e-01, 9.69491959e-01, 9.92340326e-01, 9.88328516e-01,
    9.95552719e-01, 3.54609758e-01, 2.67221928e-01, 5.60551465e-01, 4.35290039e-01,
    5.65432191e-01, 6.01448298e-01
]
_MACC = [2.1453928e-02, 7.3905742e-01, 4.1163361e-01, 7.9865617e-01, 9.1986191e-01, 9.5041156e-01]
_BF1 = [
    0.8113003373146057, 0.8526162505149841, 0.17164576053619385, 0.03164796531200409,
    0.20997394621372223, 0.44903290271759033, 0.07847517728805542, 0.8753038048744202
]

#: metric -> options of its published surrogate
PAPER_PRESETS = {
    'mIoU': dict(theta=_MIOU, parameterization='bezier', num_pieces=2, drop_bg=False, tol=5),
    'FWIoU': dict(theta=_FWIOU, parameterization='bezier', num_pieces=2, drop_bg=False, tol=5),
    'mAcc': dict(theta=_MACC, parameterization='bezier', num_pieces=2, drop_bg=False, tol=5),
    # published with the same six numbers as mAcc
    'gAcc': dict(theta=list(_MACC), parameterization='bezier', num_pieces=2, drop_bg=False,
                 tol=5),
    # published with the same twelve numbers as FWIoU
    'BIoU': dict(theta=list(_FWIOU), parameterization='bezier', num_pieces=2, drop_bg=True,
                 tol=5),
    'BF1': dict(theta=_BF1, parameterization='bezier', num_pieces=1, drop_bg=False, tol=5),
}


def paper_preset(metric: str) -> dict:
    """Options of the published surrogate of a built-in metric (case-insensitive)."""
    key = {k.lower(): k for k in PAPER_PRESETS}.get(str(metric).strip().lower())
    if key is None:
        raise ValueError(f"theta='paper' exists only for the built-in metrics "
                         f"{', '.join(PAPER_PRESETS)}, got target_metric={metric!r}; for a sum "
                         f"such as mIoU + BIoU put one AutoSegLoss per metric in loss_decode")
    return dict(PAPER_PRESETS[key], theta=list(PAPER_PRESETS[key]['theta']))
