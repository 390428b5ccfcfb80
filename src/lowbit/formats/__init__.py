"""L0: what a number is. Number formats, granularity, the quantization arithmetic, packing
and size accounting. Depends only on torch, numpy and the standard library."""

from lowbit.formats.affine import QParams, choose_qparams, dequantize, fake_quantize, quantize
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.packing import pack_codes, unpack_codes
from lowbit.formats.qtypes import QTYPES, get_qtype
from lowbit.formats.sqnr import sqnr_db
from lowbit.formats.weight_format import WeightFormat

__all__ = [
    "QTYPES",
    "PerAxis",
    "PerGroup",
    "PerTensor",
    "QParams",
    "WeightFormat",
    "choose_qparams",
    "dequantize",
    "fake_quantize",
    "get_qtype",
    "pack_codes",
    "quantize",
    "sqnr_db",
    "unpack_codes",
]
