"""hessfree.data: the benchmark data sets, each with a documented shape, dtype and range.

Deep-autoencoder sets ([H&S06]): ``mnist`` (real files, checksummed, [Data: MNIST]; ``fetch``
downloads them), ``curves`` and ``faces`` (re-generated, [Data: CURVES] / [Data: FACES]).
RNN problems ([M&S11]): ``pathological`` with ``zero_one_error`` ([Data: pathological]).
Toy problems for quick sanity checks: ``toy``. The data root is an argument or ``$HESSFREE_DATA``.
"""

from hessfree.data import toy
from hessfree.data.curves import curves
from hessfree.data.faces import faces, load_olivetti
from hessfree.data.fetch import FetchError, fetch
from hessfree.data.idx import IDXError, parse_idx, read_idx
from hessfree.data.mnist import ChecksumError, mnist
from hessfree.data.pathological import TASKS, TaskSpec, n_outputs, pathological, task_spec
from hessfree.data.pathological_error import biases_baseline, constant_output, zero_one_error
from hessfree.data.toy import sequence_reversal

__all__ = [
    "TASKS",
    "ChecksumError",
    "FetchError",
    "IDXError",
    "TaskSpec",
    "biases_baseline",
    "constant_output",
    "curves",
    "faces",
    "fetch",
    "load_olivetti",
    "mnist",
    "n_outputs",
    "parse_idx",
    "pathological",
    "read_idx",
    "sequence_reversal",
    "task_spec",
    "toy",
    "zero_one_error",
]
